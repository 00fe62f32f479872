"""The Docker Compose fleet: docker-compose.yml, the two images and the monitoring config.

No Docker engine is needed: the files are parsed and their properties asserted, so a compose file
that would lose the GPU reservation, start a worker before the schema exists, or ship a default
password fails here. Where the `docker compose` plugin is installed, `docker compose config` also
validates the file; elsewhere that one check is skipped with the reason.
"""

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from workers.core.settings import FleetSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
WORKER_DOCKERFILE = REPO / "ops" / "docker" / "worker.Dockerfile"
PRODUCER_DOCKERFILE = REPO / "ops" / "docker" / "producer.Dockerfile"
PROMETHEUS_CONFIG = REPO / "ops" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = REPO / "ops" / "grafana" / "provisioning"
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "fleet.json"

SERVICES = {
    "redis",
    "postgres",
    "etcd",
    "minio",
    "milvus",
    "flower",
    "migrate",
    "producer",
    "worker",
    "exporter",
    "api",
    "prometheus",
    "grafana",
}
ONE_SHOT = {"migrate", "producer"}
# Services running our code, with the shared FLEET_* settings.
FLEET_SERVICES = {"migrate", "producer", "worker", "exporter", "api"}
# Services whose state must outlive their container, and where it lives.
STATE = {
    "redis": "/data",
    "postgres": "/var/lib/postgresql/data",
    "etcd": "/etcd",
    "minio": "/minio_data",
    "milvus": "/var/lib/milvus",
    "worker": "/models",
    "prometheus": "/prometheus",
    "grafana": "/var/lib/grafana",
}
# Compose-level secrets: required, never defaulted.
SECRETS = {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH", "GRAFANA_ADMIN_PASSWORD"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|BASIC_AUTH|_TOKEN$|ACCESS_KEY")
DUMMY_SECRETS = {
    "POSTGRES_PASSWORD": "dummy-pg-secret",
    "MINIO_ROOT_USER": "dummy-minio-user",
    "MINIO_ROOT_PASSWORD": "dummy-minio-secret",
    "FLOWER_BASIC_AUTH": "dummy:flower-secret",
    "GRAFANA_ADMIN_PASSWORD": "dummy-grafana-secret",
}
# Settings that the README's table does not list (yet) but the fleet uses.
EXTRA_SETTINGS = {"FLEET_METRICS_PORT", "FLEET_STUCK_AFTER_S"}
COMPOSE_ONLY = SECRETS | {"DOCS_DIR"}
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
DASHBOARD_METRICS = {
    "fleet_chunks_embedded_total",
    "fleet_tokens_embedded_total",
    "fleet_backlog_chunks",
    "fleet_eta_seconds",
    "fleet_queue_depth",
    "fleet_failures_total",
    "fleet_forward_seconds_sum",
    "fleet_batch_padding_ratio",
    "fleet_sink_seconds",
    "fleet_gpu_memory_bytes",
    "fleet_model_loaded",
}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (the x-fleet-env anchor merges into it)"
    return env


def _volume_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        # The source may hold ${VAR:-./path}: split on the colons outside ${...}.
        parts = re.split(r":(?![^{]*\})", entry)
        mounts.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return mounts


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continued instruction"
    return instructions


def _pip_installs(instructions: list[tuple[str, str]]) -> list[str]:
    return [
        command.strip()
        for keyword, arguments in instructions
        if keyword == "RUN"
        for command in re.split(r"&&|;", arguments)
        if "pip install" in command
    ]


def _image_is_pinned(image: str) -> bool:
    name, _, tag = image.rpartition("/")[2].partition(":")
    return bool(name) and bool(tag) and tag != "latest" and "$" not in image and any(ch.isdigit() for ch in tag)


def _env_example_names() -> dict[str, str | None]:
    """Variables in .env.example, set (value) or documented as a commented line (None)."""
    names: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            names[match[1]] = match[2]
        elif match := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            names.setdefault(match[1], None)
    return names


# -- services -----------------------------------------------------------------------------------


def test_every_fleet_service_is_defined(services):
    missing = SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_worker_reserves_one_nvidia_gpu_and_can_be_scaled(services):
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert devices[0].get("count") == 1
    # `--scale worker=N` needs generated names and no fixed host port per replica.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert ("models", "/models", "rw") in _volume_mounts(worker)


def test_worker_stops_gracefully_and_exposes_metrics(services):
    worker = services["worker"]
    # Celery's soft shutdown (60 s) must finish before Docker's SIGKILL.
    assert _seconds(worker["stop_grace_period"]) >= 90
    assert str(_env(worker)["FLEET_METRICS_PORT"]) == "9100"
    assert worker["restart"] == "unless-stopped"


def test_long_running_services_have_healthchecks(services):
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shot == ONE_SHOT, "only migrate and producer run once and exit"
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check, f"{name} runs for good but has no healthcheck"
        assert not check.get("disable"), name
        assert check["test"] and check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert service.get("restart") == "unless-stopped", f"{name} should come back after a crash"


def test_depends_on_waits_for_health_or_completion(services):
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a bare list"
        for target, spec in depends.items():
            condition = spec.get("condition")
            assert condition in {"service_healthy", "service_completed_successfully"}, f"{name} -> {target}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s health, which has none"
            else:
                assert target in ONE_SHOT, f"{name} waits for {target} to exit, but it runs for good"


def test_start_order_puts_the_schema_before_any_fleet_code(services):
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("producer", "worker", "exporter"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
        assert depends["milvus"] == {"condition": "service_healthy"}, name
    assert services["milvus"]["depends_on"] == {
        "etcd": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
    }


def test_state_lives_in_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, _target, _mode in _volume_mounts(service):
            if source.startswith(("./", "/", "${")):
                continue
            assert source in declared, f"{name} mounts volume {source!r}, not declared at the top level"
    for name, target in STATE.items():
        named = {t for s, t, _ in _volume_mounts(services[name]) if s in declared}
        assert target in named, f"{name} keeps {target} in its container: it would be lost on `down`"


def test_bind_mounts_exist_and_are_read_only(services):
    for name, service in services.items():
        for source, target, mode in _volume_mounts(service):
            if not source.startswith(("./", "${")):
                continue
            default = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", source)
            path = default[1] if default else source
            assert (REPO / path).exists(), f"{name} mounts {path}, which is not in the repository"
            assert mode == "ro", f"{name} mounts {source} at {target} writable"


def test_commands_of_the_one_image_services(services):
    assert services["migrate"]["entrypoint"] == ["migrate"]
    assert services["migrate"]["command"] == ["db"]
    producer = services["producer"]
    assert producer["command"] == ["ingest", "/docs", "--wait"]
    assert ("${DOCS_DIR:-./ops/sample-docs}", "/docs", "ro") in _volume_mounts(producer)
    assert services["exporter"]["command"] == ["serve-metrics", "--port", "9101"]
    flower = services["flower"]
    assert flower["entrypoint"] == ["celery"]
    assert flower["command"][:3] == ["-A", "workers.app", "flower"]
    assert "--port=5555" in flower["command"]
    producer_image = producer["image"]
    for name in ("migrate", "exporter", "flower"):
        assert services[name]["image"] == producer_image, f"{name} runs the producer image"
        assert services[name]["build"]["dockerfile"] == "ops/docker/producer.Dockerfile"
    assert services["worker"]["build"]["dockerfile"] == "ops/docker/worker.Dockerfile"


# -- settings and secrets -------------------------------------------------------------------------


def test_fleet_settings_are_shared_through_one_anchor(compose_text, services):
    assert re.search(r"^x-fleet-env: &fleet-env$", compose_text, re.MULTILINE)
    expected = {
        "FLEET_BROKER_URL": "redis://redis:6379/0",
        "FLEET_MILVUS_URI": "http://milvus:19530",
        "FLEET_MODEL": "${FLEET_MODEL:-Qwen/Qwen3-Embedding-0.6B}",
    }
    database_urls = set()
    for name in FLEET_SERVICES:
        env = _env(services[name])
        for key, value in expected.items():
            assert env.get(key) == value, f"{name}: {key}"
        database_urls.add(env["FLEET_DATABASE_URL"])
    assert len(database_urls) == 1
    url = database_urls.pop()
    assert url.startswith("postgresql://fleet:${POSTGRES_PASSWORD:?") and url.endswith("@postgres:5432/fleet")
    postgres = _env(services["postgres"])
    assert postgres["POSTGRES_USER"] == "fleet" and postgres["POSTGRES_DB"] == "fleet"


def test_postgres_has_buffers_and_wal_for_a_corpus_of_millions(services):
    # README "Capacity": the defaults (128 MB of buffers, 1 GB of WAL) slow an ingest past ~1 M chunks.
    settings = dict(arg.split("=", 1) for arg in services["postgres"]["command"] if "=" in arg)
    assert settings["shared_buffers"].endswith(":-512MB}") and settings["max_wal_size"].endswith(":-4GB}")
    assert settings["wal_compression"] == "on"


def test_optional_settings_are_passed_through_not_set_empty(compose_text, services):
    # FLEET_EMBED_DIM="" is not "unset" to pydantic-settings: it fails to parse as an integer.
    assert not re.search(r"\$\{[A-Za-z0-9_]+:?-\}", compose_text), "a variable defaults to the empty string"
    for name in FLEET_SERVICES:
        env = _env(services[name])
        assert env["FLEET_EMBED_DIM"] is None, f"{name}: FLEET_EMBED_DIM must be passed through only when set"
        assert env["FLEET_MILVUS_TOKEN"] is None, name


def test_defaults_in_compose_and_env_example_match_the_code(services):
    """A default copied out of workers/settings.py must still be the code's default."""
    fields = FleetSettings.model_fields
    copied = 0
    for name in FLEET_SERVICES:
        for key, value in _env(services[name]).items():
            if match := re.fullmatch(r"\$\{(FLEET_[A-Z0-9_]+):-([^}]*)\}", str(value)):
                assert match[1] == key, f"{name}: {key} defaults from another variable"
                field = key.removeprefix("FLEET_").lower()
                if field in fields:
                    assert match[2] == str(fields[field].default), f"{name}: {key} defaults to {match[2]!r}"
                    copied += 1
    assert copied, "FLEET_MODEL's default is written out in docker-compose.yml"
    documented = 0
    for match in re.finditer(r"^# (FLEET_[A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE):
        field = match[1].removeprefix("FLEET_").lower()
        # A computed default (the CPU count) has no single value to write out.
        computed = field in fields and fields[field].default_factory is not None
        default = fields[field].default if field in fields and not computed else None
        if default is not None and field != "data_dir":
            assert match[2] == str(default), (
                f".env.example shows {match[1]}={match[2]}, the code's default is {default}"
            )
            documented += 1
    assert documented >= 8


def test_secrets_are_required_never_defaulted(compose_text):
    references: dict[str, list[str]] = {}
    for match in VAR_REF.finditer(compose_text):
        references.setdefault(match[1], []).append(match[0])
    for secret in SECRETS:
        assert secret in references, f"{secret} is never used"
    for name, uses in references.items():
        if name in SECRETS or SECRET_NAME.search(name):
            for use in uses:
                assert REQUIRED_REF.match(use), f"{use} must use the required form ${{{name}:?message}}"
    for secret in SECRETS:
        bare = re.search(rf"(?<!\$)\${secret}\b", compose_text)
        assert not bare, f"${secret} without braces skips the required check"


def test_no_literal_credentials(compose_text, services):
    lowered = compose_text.lower()
    for default in ("minioadmin", "postgres:postgres", "admin:admin", "guest:guest", "changeme"):
        assert default not in lowered, f"default credential {default!r} in docker-compose.yml"
    for name, service in services.items():
        for key, value in _env(service).items():
            if SECRET_NAME.search(key) or key in SECRETS:
                assert value is None or REQUIRED_REF.match(str(value)), f"{name}: {key} has a literal value"
            for password in re.findall(r"://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]+)@", str(value or "")):
                assert REQUIRED_REF.match(password), f"{name}: {key} carries a literal password"
        command = " ".join(map(str, service.get("command") or []))
        assert "--basic-auth=" not in command, f"{name}: a password on the command line shows in `ps`"
        assert "requirepass" not in command, name


def test_flower_has_basic_auth_from_the_environment(services):
    flower = services["flower"]
    env = _env(flower)
    assert REQUIRED_REF.match(env["FLOWER_BASIC_AUTH"])
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert env["FLEET_BROKER_URL"] == "redis://redis:6379/0"
    # Flower needs the broker only: keep the database password out of it.
    assert "FLEET_DATABASE_URL" not in env
    assert flower["ports"] == ["127.0.0.1:5555:5555"]


def test_grafana_admin_password_is_required(services):
    grafana = services["grafana"]
    assert grafana["profiles"] == ["dashboards"]
    assert _env(grafana)["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_published_ports_are_on_loopback_only(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r} on all hosts"
            published[name] = port
    assert set(published) == {"api", "flower", "prometheus", "grafana"}


def test_every_image_is_pinned(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image name"
        assert _image_is_pinned(image), f"{name}: image {image!r} is not pinned to a version tag"
    for path in (WORKER_DOCKERFILE, PRODUCER_DOCKERFILE):
        bases = [arguments.split()[0] for keyword, arguments in _dockerfile(path) if keyword == "FROM"]
        assert bases, path.name
        for base in bases:
            assert _image_is_pinned(base), f"{path.name}: base image {base!r} is not pinned"


def test_pinning_check_rejects_floating_tags():
    assert _image_is_pinned("redis:7.4.1-alpine")
    assert _image_is_pinned("quay.io/coreos/etcd:v3.5.18")
    assert not _image_is_pinned("redis")
    assert not _image_is_pinned("grafana/grafana:latest")
    assert not _image_is_pinned("localhost:5000/redis")
    assert not _image_is_pinned("redis:alpine")


def test_env_example_documents_every_setting(compose_text, services):
    documented = _env_example_names()
    in_compose = set(re.findall(r"\bFLEET_[A-Z0-9_]+\b", compose_text))
    for service in services.values():
        in_compose |= {key for key in _env(service) if key.startswith("FLEET_")}
    readme_rows = [line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines() if line[:1] == "|"]
    in_readme = set(re.findall(r"`(FLEET_[A-Z0-9_]+)`", "\n".join(readme_rows)))
    assert len(in_readme) >= 10, "the README's settings table was not found"
    in_settings = {f"FLEET_{name.upper()}" for name in FleetSettings.model_fields}
    referenced = {match[1] for match in VAR_REF.finditer(compose_text)}
    expected = in_compose | in_readme | in_settings | EXTRA_SETTINGS | COMPOSE_ONLY | referenced
    missing = expected - set(documented)
    assert not missing, f".env.example does not document {sorted(missing)}"


def test_env_example_leaves_secrets_empty_and_marks_them_required():
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    documented = _env_example_names()
    for secret in SECRETS:
        assert documented.get(secret) == "", f"{secret} must be an empty placeholder in .env.example"
        block = re.search(rf"((?:^#.*\n)+)(?:^[A-Z_]+=.*\n)*^{secret}=", text, re.MULTILINE)
        assert block and "required" in block[1], f"{secret} needs a comment saying it is required"
    # Everything set in .env.example is non-secret; FLEET_* lines stay commented so that a copied
    # .env does not point the local commands at the compose host names.
    for name, value in documented.items():
        if value is not None and name not in SECRETS:
            assert not SECRET_NAME.search(name), name
            assert not name.startswith("FLEET_"), f"{name} is set in .env.example; leave it commented"


# -- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [WORKER_DOCKERFILE, PRODUCER_DOCKERFILE], ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(path):
    instructions = _dockerfile(path)
    users = [index for index, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    assert users, f"{path.name} runs as root"
    last = users[-1]
    assert instructions[last][1].split(":")[0] not in {"root", "0"}, path.name
    runs = [index for index, (keyword, _) in enumerate(instructions) if keyword == "RUN"]
    assert max(runs) < last, f"{path.name}: a RUN after the last USER would hint at root at run time"


def test_producer_image_installs_neither_torch_nor_the_embed_extra():
    instructions = _dockerfile(PRODUCER_DOCKERFILE)
    installs = _pip_installs(instructions)
    assert any(re.search(r"pip install --no-cache-dir \.(\s|$)", command) for command in installs), installs
    for command in installs:
        assert "embed" not in command and "torch" not in command, command
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "optional-dependencies" not in runs, "the producer image reads an extra's requirements"
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11.")
    assert ("ENTRYPOINT", '["producer"]') in instructions


def test_worker_image_keeps_the_base_torch_and_the_model_out_of_the_image():
    instructions = _dockerfile(WORKER_DOCKERFILE)
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("pytorch/pytorch:")
    installs = _pip_installs(instructions)
    # The project with the extras of EXTRAS: `embed` for the worker, `embed,train` for the trainer.
    project = [command for command in installs if '".[${EXTRAS}]"' in command]
    assert project and all("--no-cache-dir" in command for command in installs), installs
    assert ("ARG", "EXTRAS=embed") in instructions
    # Every install is constrained to the base image's torch, so pip cannot swap it for another build.
    assert all(" -c /etc/pip-torch.txt" in command for command in installs), installs
    runs = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    # The base's torch and the build's check both meet the floor of pyproject's embed extra.
    embed = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["embed"]
    floor = tuple(int(part) for part in next(d for d in embed if d.startswith("torch>=")).split(">=")[1].split("."))
    base = tuple(int(part) for part in instructions[0][1].split(":")[1].split("-")[0].split(".")[:2])
    assert base >= floor[:2], f"the base image's torch {base} is below pyproject's floor {floor}"
    assert f">= {floor[:2]}" in runs, f"the build must check that the base torch satisfies torch>={floor}"
    env = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert "HF_HOME=/models" in env and "FLEET_METRICS_PORT=9100" in env
    assert ("VOLUME", '["/models"]') in instructions
    assert not any(keyword == "COPY" and "models" in arguments for keyword, arguments in instructions)
    cmd = next(json.loads(arguments) for keyword, arguments in instructions if keyword == "CMD")
    assert cmd == ["celery", "-A", "workers.app", "worker", "--loglevel=INFO", "-n", "worker@%h"]


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build():
    ignored = {
        line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines() if line.strip()
    }
    for entry in (".env", ".venv", ".fleet", ".git", ".pytest_cache", ".ruff_cache", "**/__pycache__"):
        assert entry in ignored, f".dockerignore lacks {entry}"


# -- monitoring ---------------------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_replica_and_the_exporter(services):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_sd = jobs["workers"]["dns_sd_configs"]
    assert any({"worker", "tasks.worker"} & set(sd["names"]) for sd in worker_sd)
    assert all(sd["port"] == int(_env(services["worker"])["FLEET_METRICS_PORT"]) for sd in worker_sd)
    assert all(sd.get("type", "SRV") == "A" for sd in worker_sd), "Docker's DNS answers A records"
    targets = {t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "exporter:9101" in targets
    mounts = _volume_mounts(services["prometheus"])
    assert ("./ops/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro") in mounts
    # The alert rules: mounted, and named by the configuration.
    assert ("./ops/prometheus/alerts.yml", "/etc/prometheus/alerts.yml", "ro") in mounts
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_the_query_service_runs_on_cpu_and_is_healthy_when_ready(services):
    api = services["api"]
    # It embeds queries: the worker image (torch), without a GPU reservation.
    assert api["image"] == services["worker"]["image"] and "deploy" not in api
    command = api["command"]
    assert command[:2] == ["producer", "serve"] and command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert api["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert _env(api)["FLEET_DEVICE"] == "cpu"
    assert ("models", "/models", "rw") in _volume_mounts(api)
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe
    assert api["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert api["depends_on"]["milvus"] == {"condition": "service_healthy"}
    for key, value in _env(api).items():
        if key.startswith("FLEET_API_"):
            assert value is None, f"{key} is passed through, never given a value here"


def test_prometheus_scrapes_the_query_service(services):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    command = services["api"]["command"]
    assert f"api:{command[command.index('--port') + 1]}" in targets


def test_grafana_provisions_the_datasource_and_dashboards(services):
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))[
        "datasources"
    ]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "fleet.yml").read_text(encoding="utf-8"))[
        "providers"
    ]
    mounts = {target: source for source, target, _ in _volume_mounts(services["grafana"])}
    assert mounts["/etc/grafana/provisioning"] == "./ops/grafana/provisioning"
    for provider in providers:
        assert mounts[provider["options"]["path"]] == "./ops/grafana/dashboards"


def test_dashboard_uses_the_provisioned_datasource_and_shows_every_fleet_metric():
    uid = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))[
        "datasources"
    ][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = []
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            exprs.append(target["expr"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    text = "\n".join(exprs)
    missing = {metric for metric in DASHBOARD_METRICS if metric not in text}
    assert not missing, f"the dashboard does not show {sorted(missing)}"
    # Per worker, and by the labels the metrics carry.
    for grouping in ("by (instance)", "by (index_version)", "by (queue)", "by (kind)", "by (sink, le)"):
        assert grouping in text, grouping


# -- Compose itself -----------------------------------------------------------------------------


def _compose() -> tuple[list[str] | None, str]:
    """The compose command to validate with (the v2 plugin, else docker-compose v1), or why none."""
    reasons = []
    if shutil.which("docker") is not None:
        try:
            probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                return ["docker", "compose"], ""
            output = (probe.stderr or probe.stdout).strip().splitlines()
            reasons.append(f"`docker compose version` failed: {output[0] if output else f'exit {probe.returncode}'}")
        except (OSError, subprocess.TimeoutExpired) as err:
            reasons.append(f"`docker compose version` failed: {err}")
    else:
        reasons.append("no docker client")
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"], ""
    return None, "; ".join([*reasons, "no docker-compose either"])


def _compose_config(
    compose: list[str], tmp_path: Path, secrets: dict[str, str], *args: str
) -> subprocess.CompletedProcess:
    # An empty env file: a developer's own .env must not fill in what the test leaves out.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {key: value for key, value in os.environ.items() if key not in SECRETS and key != "DOCS_DIR"}
    env |= secrets
    command = [*compose, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args, "config"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_docker_compose_config_accepts_the_file(tmp_path):
    compose, reason = _compose()
    if compose is None:
        pytest.skip(
            f"NOT VALIDATED BY COMPOSE: {reason}. docker-compose.yml was only checked by parsing; install the "
            "docker compose plugin to run `docker compose config` on it."
        )
    for profile in ([], ["--profile", "dashboards"]):
        result = _compose_config(compose, tmp_path, DUMMY_SECRETS, *profile)
        assert result.returncode == 0, result.stderr
        assert "dummy-pg-secret@postgres:5432/fleet" in result.stdout
    without = {key: value for key, value in DUMMY_SECRETS.items() if key != "POSTGRES_PASSWORD"}
    result = _compose_config(compose, tmp_path, without)
    assert result.returncode != 0, "compose accepted the file without POSTGRES_PASSWORD"
    assert "POSTGRES_PASSWORD" in result.stderr
