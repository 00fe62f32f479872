# GPU worker: `celery -A workers.app worker` on a CUDA build of PyTorch.
#
#   docker build -f ops/docker/worker.Dockerfile -t embedding-fleet/worker:0.1.0 .
#
# The trainer image (`migrate finetune`, the k8s Job `finetune`) is the same with the `train`
# extra (datasets, accelerate, peft), which the workers do not carry:
#
#   docker build -f ops/docker/worker.Dockerfile --build-arg EXTRAS=embed,train \
#     -t embedding-fleet/trainer:0.1.0 .
#
# torch comes from the base image (a CUDA build); pip must not replace it with another build,
# so every install below is constrained to the exact torch version the base ships.
# The model is not baked in: HF_HOME=/models is a volume, filled on first start and shared.
# Base: torch 2.11 has the packed attention kernel (torch.nn.attention.varlen, since 2.10: the
# same floor as pyproject's `embed` extra), CUDA 12.8 runs on Ampere, Hopper and Blackwell.
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/models \
    FLEET_METRICS_PORT=9100

# The base must satisfy the project: Python >= 3.11 and torch >= 2.4 with CUDA. Then pin that
# torch for pip: a dependency asking for another torch fails the build instead of swapping it.
RUN python -c "import sys, torch; \
v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); \
assert sys.version_info >= (3, 11), f'Python {sys.version} < 3.11'; \
assert v >= (2, 10), f'base torch {torch.__version__} < 2.10 (no varlen attention)'; \
assert torch.version.cuda, 'base torch is not a CUDA build'; \
print('base torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /etc/pip-torch.txt

RUN groupadd --gid 10001 fleet \
 && useradd --uid 10001 --gid fleet --create-home --shell /usr/sbin/nologin fleet \
 && mkdir -p /app /models \
 && chown fleet:fleet /app /models

# Dependencies first (a layer that survives code changes), read from pyproject.toml.
ARG EXTRAS=embed
COPY pyproject.toml /tmp/src/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/src/pyproject.toml', 'rb'))['project']; \
extras = [r for e in '${EXTRAS}'.split(',') for r in p['optional-dependencies'][e]]; \
print('\n'.join(p['dependencies'] + extras))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c /etc/pip-torch.txt -r /tmp/requirements.txt

COPY README.md /tmp/src/
COPY workers /tmp/src/workers
COPY producer /tmp/src/producer
COPY migrations /tmp/src/migrations
RUN cd /tmp/src \
 && pip install --no-cache-dir -c /etc/pip-torch.txt ".[${EXTRAS}]" \
 && cd / && rm -rf /tmp/src /tmp/requirements.txt \
 && python -c "import torch, importlib.metadata as m; \
assert 'torch==' + m.version('torch') == open('/etc/pip-torch.txt').read().strip(), 'pip replaced torch'; \
import workers, producer, sentence_transformers; print('torch', torch.__version__, 'kept')"

# Must come after the chown above: a new named volume copies /models with its owner.
VOLUME ["/models"]

USER fleet
WORKDIR /app
EXPOSE 9100

# Exec form: celery is PID 1 and gets `docker stop`'s SIGTERM, which starts its soft shutdown.
CMD ["celery", "-A", "workers.app", "worker", "--loglevel=INFO", "-n", "worker@%h"]
