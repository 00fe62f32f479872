# Producer: the `producer` CLI (ingest, status, retry, serve-metrics), `migrate` and Flower.
# Enqueue only: no torch, no `embed` extra (searching embeds a query: run it in a worker).
#
#   docker build -f ops/docker/producer.Dockerfile -t embedding-fleet/producer:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/models

RUN groupadd --gid 10001 fleet \
 && useradd --uid 10001 --gid fleet --create-home --shell /usr/sbin/nologin fleet \
 && mkdir -p /app /models \
 && chown fleet:fleet /app /models

# Dependencies first (a layer that survives code changes), read from pyproject.toml.
COPY pyproject.toml /tmp/src/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/src/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

COPY README.md /tmp/src/
COPY workers /tmp/src/workers
COPY producer /tmp/src/producer
COPY migrations /tmp/src/migrations
RUN cd /tmp/src \
 && pip install --no-cache-dir . \
 && cd / && rm -rf /tmp/src /tmp/requirements.txt \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the producer image'" \
 && producer --help > /dev/null

USER fleet
WORKDIR /app

ENTRYPOINT ["producer"]
CMD ["--help"]
