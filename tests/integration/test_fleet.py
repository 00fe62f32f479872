"""Fleet mode: a real `celery -A workers.app worker` process consuming from Redis, Postgres
server, Milvus Lite run as a server so that producer and worker share it."""

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from producer.dispatch import CeleryDispatcher
from tests import services
from tests.conftest import free_port
from tests.integration.conftest import REPO, cli_env, run_cli, run_json, write_corpus
from workers.core import schema
from workers.core.stores import catalog, milvus, postgres


@pytest.fixture
def fleet_settings(make_settings, migrated_url, redis_url, milvus_server):
    return make_settings(
        database_url=migrated_url,
        broker_url=redis_url,
        milvus_uri=milvus_server,
        model="fake:64",
        chunk_min_tokens=60,
        chunk_max_tokens=120,
    )


def start_worker(env: dict, log: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        services.celery_worker(name),
        env=env,
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def worker(fleet_settings, tmp_path) -> Iterator[subprocess.Popen]:
    port = free_port()
    process = start_worker({**cli_env(fleet_settings), "FLEET_METRICS_PORT": str(port)}, tmp_path / "worker.log", "w1")
    process.metrics_port = port
    yield process
    stop(process)
    print((tmp_path / "worker.log").read_text()[-5000:])


def test_worker_process_embeds_what_the_producer_enqueues(fleet_settings, worker, tmp_path):
    env = cli_env(fleet_settings)
    docs = write_corpus(tmp_path / "docs")
    report = run_json(env, "producer", "ingest", str(docs), "--wait")
    assert report["documents_new"] == 5 and report["chunks_enqueued"] > 5

    status = run_json(env, "producer", "status")
    assert status["embedded"] == status["chunks"] == report["chunks_enqueued"]
    assert status["pending"] == status["failed"] == 0

    hits = run_json(env, "producer", "search", "Welcome to Sao Mai cafeteria", "--level", "public")
    assert hits[0]["source_path"] == "handbook/welcome.md"
    assert {hit["access_level"] for hit in hits} == {"public"}

    again = run_json(env, "producer", "ingest", str(docs), "--wait")
    assert again["chunks_enqueued"] == 0
    assert worker.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=5) as health:
        assert health.status == 200 and health.read().startswith(b"ok")


def test_two_worker_processes_share_the_work_without_duplicates(fleet_settings, tmp_path):
    settings = fleet_settings.model_copy(update={"task_chunks": 2, "worker_concurrency": 2})
    env = {**cli_env(settings), "FLEET_TASK_CHUNKS": "2", "FLEET_WORKER_CONCURRENCY": "2", "FLEET_HEARTBEAT_S": "0.5"}
    workers = [start_worker({**env, "FLEET_METRICS_PORT": "0"}, tmp_path / f"w{n}.log", f"w{n}") for n in (1, 2)]
    try:
        app = CeleryDispatcher(settings).app
        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        report = run_json(env, "producer", "ingest", str(write_corpus(tmp_path / "docs")), "--wait")
        time.sleep(1.5)  # a last heartbeat from each worker
        with closing(postgres.connect(settings)) as conn:
            done = dict(conn.execute("SELECT name, chunks_done FROM worker_heartbeats").fetchall())
            chunk_ids = {chunk_id for (chunk_id,) in conn.execute("SELECT id FROM chunks")}
            version = catalog.live_version(conn)
    finally:
        for worker in workers:
            stop(worker)
    assert len(done) == 2 and all(count > 0 for count in done.values()), done
    assert sum(done.values()) >= report["chunks_enqueued"]
    client = milvus.connect(settings)
    stored = client.query(version.collection, filter="", output_fields=["chunk_id"], limit=16384)
    assert sorted(row["chunk_id"] for row in stored) == sorted(chunk_ids)  # complete and duplicate-free
    status = run_json(env, "producer", "status")
    assert (status["embedded"], status["backlog"], status["stuck_workers"]) == (len(chunk_ids), 0, [])


def test_worker_killed_mid_batch_loses_nothing(fleet_settings, tmp_path):
    """SIGKILL a worker holding tasks; after the visibility timeout another worker finishes them."""
    settings = fleet_settings.model_copy(update={"model": "null:64@2000", "task_chunks": 4})
    # Two tasks held at a time, each done well within the visibility timeout: only the killed
    # worker's tasks wait for it, and nothing is redelivered while still in progress.
    env = {
        **cli_env(settings),
        "FLEET_TASK_CHUNKS": "4",
        "FLEET_WORKER_CONCURRENCY": "2",
        "FLEET_VISIBILITY_TIMEOUT_S": "5",
        "FLEET_METRICS_PORT": "0",
    }
    first = start_worker(env, tmp_path / "first.log", "first")
    second = None
    try:
        report = run_json(env, "producer", "ingest", str(write_corpus(tmp_path / "docs")))
        total = report["chunks_enqueued"]
        assert wait_until(lambda: 0 < embedded(settings) < total, 60), "the first worker made no progress"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        left = total - embedded(settings)
        assert left > 0, "the first worker finished before it was killed: slow the model down"
        second = start_worker(env, tmp_path / "second.log", "second")
        assert wait_until(lambda: embedded(settings) == total, 120), f"{total - embedded(settings)} chunks lost"
    finally:
        for worker in (first, second):
            if worker is not None:
                stop(worker)
    with closing(postgres.connect(settings)) as conn:
        chunk_ids = {chunk_id for (chunk_id,) in conn.execute("SELECT id FROM chunks")}
        version = catalog.live_version(conn)
        (failed,) = conn.execute("SELECT count(*) FROM failures").fetchone()
    stored = milvus.connect(settings).query(version.collection, filter="", output_fields=["chunk_id"], limit=16384)
    assert sorted(row["chunk_id"] for row in stored) == sorted(chunk_ids)
    assert failed == 0


def embedded(settings) -> int:
    with closing(postgres.connect(settings)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM chunk_embeddings WHERE embedded_at IS NOT NULL").fetchone()
    return count


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_without_migrate_db_the_server_database_is_refused(make_settings, database_url, tmp_path):
    env = cli_env(make_settings(database_url=database_url))
    result = run_cli(env, "producer", "status", check=False)
    assert result.returncode != 0
    assert "run `migrate db`" in result.stderr
    applied = run_json(env, "migrations", "db")["applied"]
    assert applied == [f"{m.version:04d}_{m.name}" for m in schema.available()]
    assert applied[:3] == ["0001_initial", "0002_worker_heartbeats", "0003_citations_and_fingerprints"]
    assert run_json(env, "migrations", "db")["applied"] == []
    assert run_json(env, "producer", "status")["documents"] == 0


def test_wait_without_workers_gives_up_with_advice(fleet_settings, tmp_path):
    env = {**cli_env(fleet_settings), "FLEET_STUCK_AFTER_S": "2"}
    result = run_cli(env, "producer", "ingest", str(write_corpus(tmp_path / "docs")), "--wait", check=False)
    assert result.returncode == 1  # a failure, not a usage error
    assert "are workers running" in result.stderr and "producer retry --pending" in result.stderr


def test_unknown_level_is_a_usage_error(make_settings, database_url):
    result = run_cli(
        cli_env(make_settings(database_url=database_url)), "producer", "search", "q", "--level", "ceo", check=False
    )
    assert result.returncode == 2
    assert "unknown access level 'ceo'" in result.stderr


def test_a_worker_with_a_model_that_is_not_there_stops_at_start_saying_what_to_fix(fleet_settings, tmp_path):
    env = {**cli_env(fleet_settings), "FLEET_MODEL": str(tmp_path / "no-such-model")}
    result = subprocess.run(
        services.celery_worker("bad"), env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "FLEET_MODEL" in result.stderr or "no-such-model" in result.stderr
    assert "Traceback" not in result.stderr
