"""Command lines of the processes that tests and benchmarks start: one place for both."""

import sys
from pathlib import Path


def milvus_lite_server(data_dir: Path | str, port: int) -> list[str]:
    """Milvus Lite as a server: several processes can share it (a Lite file cannot be shared)."""
    return [
        sys.executable,
        "-m",
        "milvus_lite",
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def celery_worker(name: str, loglevel: str = "INFO") -> list[str]:
    """A fleet worker, as `celery -A workers.app worker` runs it (gossip and mingle off: faster start)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        f"--loglevel={loglevel}",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
