#!/usr/bin/env python3
"""The fleet's plumbing alone: how many chunks/s go from enqueue to marked done when the model
costs nothing (`null:DIM`), with real Redis, Celery worker processes, Postgres and a Milvus Lite
server — all started or created by this script — with 1 and with 2 worker processes.

A GPU embeds about 400 chunks/s of Qwen3-0.6B; the plumbing must be well above that so that the
sinks never starve it.

  python ops/bench/pipeline.py --chunks 4000 [--json]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_PG, REPO, load_chunks, milvus_server, new_version, pending, scratch_database

from producer.dispatch import CeleryDispatcher
from tests import services
from workers.core.settings import FleetSettings
from workers.core.stores import postgres
from workers.embedding import resolve_model

DEFAULT_REDIS = "redis://127.0.0.1:6379/12"


def main() -> int:
    args = parse_args()
    model = f"null:{args.dim}"
    info = resolve_model(model)
    texts = [synthetic_text(i, args.words) for i in range(args.chunks)]
    report: dict = {"chunks": args.chunks, "dim": args.dim, "task_chunks": args.task_chunks}
    with scratch_database(args.postgres) as database_url, milvus_server() as milvus_uri:
        settings = FleetSettings(
            _env_file=None,
            database_url=database_url,
            milvus_uri=milvus_uri,
            broker_url=args.redis,
            model=model,
            task_chunks=args.task_chunks,
        )
        chunk_ids = load_chunks(settings, texts, info)
        for workers in (1, 2):
            report[f"chunks_per_s_{workers}_worker{'s' if workers > 1 else ''}"] = run(settings, chunk_ids, workers)
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k:24s} {v}" for k, v in report.items()))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--words", type=int, default=500, help="words per chunk (~700 Qwen tokens)")
    parser.add_argument("--task-chunks", type=int, default=32)
    parser.add_argument("--postgres", default=DEFAULT_PG)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def synthetic_text(index: int, words: int) -> str:
    return " ".join(f"word{(index * 7919 + i) % 5000}" for i in range(words))


def run(settings: FleetSettings, chunk_ids: list[str], workers: int) -> float:
    """Embed every chunk for a fresh index version with `workers` worker processes; chunks/s."""
    import redis

    redis.Redis.from_url(settings.broker_url.get_secret_value()).flushdb()
    version = new_version(settings, settings.model, resolve_model(settings.model).dim, chunk_ids)
    processes = [start_worker(settings, f"bench{n}") for n in range(workers)]
    try:
        dispatcher = CeleryDispatcher(settings)
        wait_ready(dispatcher, processes)
        started = time.perf_counter()
        with closing(postgres.connect(settings)) as conn:
            dispatcher.send(conn, version.id, chunk_ids)
        while pending(settings, version.id):
            if any(process.poll() is not None for process in processes):
                raise RuntimeError("a worker died; see its log in /tmp/bench-worker-*.log")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
    rate = len(chunk_ids) / seconds
    print(f"{workers} worker(s): {len(chunk_ids)} chunks in {seconds:.2f}s = {rate:.0f} chunks/s", file=sys.stderr)
    return round(rate, 1)


def start_worker(settings: FleetSettings, name: str) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEET_")}
    env.update(
        FLEET_DATABASE_URL=settings.database_url.get_secret_value(),
        FLEET_BROKER_URL=settings.broker_url.get_secret_value(),
        FLEET_MILVUS_URI=settings.milvus_uri,
        FLEET_MODEL=settings.model,
        FLEET_TASK_CHUNKS=str(settings.task_chunks),
    )
    log = open(f"/tmp/bench-worker-{name}.log", "w")  # noqa: SIM115 - the worker owns it
    return subprocess.Popen(
        services.celery_worker(name, "WARNING"),
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(dispatcher: CeleryDispatcher, processes: list[subprocess.Popen]) -> None:
    """Until every worker answers a ping: the timing starts with the workers up."""
    deadline = time.monotonic() + 120
    while len(dispatcher.app.control.ping(timeout=0.5)) < len(processes):
        if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
            raise RuntimeError("workers did not come up; see /tmp/bench-worker-*.log")


if __name__ == "__main__":
    sys.exit(main())
