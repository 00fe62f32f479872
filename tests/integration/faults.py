"""Real services that the fault tests own and break on purpose: their own redis-server, their own
Milvus Lite server, a Postgres database they can close to clients, and Celery worker processes.

Each is started on a private port (or database) so that killing it touches nothing else.
"""

import os
import shutil
import signal
import subprocess
import time
from contextlib import closing
from pathlib import Path

import psycopg

from tests import services
from tests.conftest import free_port, require, wait_for_port
from tests.integration.conftest import REPO


class RedisServer:
    """A redis-server that keeps nothing on disk: killed and started again, it comes back empty."""

    def __init__(self, folder: Path, *options: str):
        require(shutil.which("redis-server") is not None, "redis-server is not installed")
        self.folder = folder
        self.port = free_port()
        self.options = options  # more redis-server options
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += self.options
        log = (self.folder / "redis.log").open("a")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        wait_for_port(self.port, process=self.process)

    def kill(self) -> None:
        _kill(self.process)


class MilvusServer:
    """Milvus Lite as a server process: killed, its data stays in its folder for the next start."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.folder / "milvus.log").open("a")
        command = services.milvus_lite_server(self.folder / "milvus", self.port)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, process=self.process)

    def kill(self) -> None:
        _kill(self.process, group=True)


class ClosableDatabase:
    """A database of the machine's Postgres that can refuse every client, as a stopped server does:
    new connections fail, and the ones open are cut."""

    def __init__(self, admin: psycopg.Connection, url: str):
        self.admin = admin
        self.url = url
        self.name = url.rsplit("/", 1)[1]

    def close(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false')
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        )

    def open(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')


class Workers:
    """Celery worker processes, as `celery -A workers.app worker` runs them."""

    def __init__(self, env: dict, folder: Path):
        self.env = env
        self.folder = folder
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, **overrides: str) -> subprocess.Popen:
        env = {**self.env, "FLEET_METRICS_PORT": "0", **overrides}
        log = (self.folder / f"{name}.log").open("a")
        process = subprocess.Popen(
            services.celery_worker(name),
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        _kill(self.processes[name], group=True)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _kill(process, group=True)

    def notable(self) -> str:
        """The log lines worth reading after a fault: warnings, errors, what was sent again."""
        lines = []
        for path in sorted(self.folder.glob("*.log")):
            picked = [
                line
                for line in path.read_text().splitlines()
                if "WARNING" in line or "ERROR" in line or "CRITICAL" in line
            ]
            lines += [f"--- {path.name}", *picked[-40:]]
        return "\n".join(lines)


def _kill(process: subprocess.Popen | None, group: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    if group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.kill()
    process.wait()


def wait_until(condition, timeout: float, interval: float = 0.5) -> float | None:
    """Seconds until `condition()` held, or None when it did not within `timeout` (errors count as no)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except Exception:  # a service the test broke: not yet
            pass
        time.sleep(interval)
    return None


def counts(url: str) -> dict:
    """Chunks, and for the live version: embedded, pending, failed, and the failures recorded."""
    with closing(psycopg.connect(url, autocommit=True, connect_timeout=5)) as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM chunks),
                   count(*) FILTER (WHERE embedded_at IS NOT NULL),
                   count(*) FILTER (WHERE embedded_at IS NULL AND failed_at IS NULL),
                   count(*) FILTER (WHERE failed_at IS NOT NULL),
                   (SELECT count(*) FROM failures)
            FROM chunk_embeddings ce JOIN index_versions v ON v.id = ce.index_version_id AND v.state = 'live'
            """
        ).fetchone()
    return dict(zip(("chunks", "embedded", "pending", "failed", "failures"), row, strict=True))
