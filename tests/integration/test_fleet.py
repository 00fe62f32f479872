"""Fleet mode: a real `celery -A workers.app worker` process consuming from Redis, Postgres
server, Milvus Lite run as a server so that producer and worker share it."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, cli_env, run_cli, run_json, write_corpus


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
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "--loglevel=INFO",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
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
    process = start_worker(cli_env(fleet_settings), tmp_path / "worker.log", "w1")
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


def test_without_migrate_db_the_server_database_is_refused(make_settings, database_url, tmp_path):
    env = cli_env(make_settings(database_url=database_url))
    result = run_cli(env, "producer", "status", check=False)
    assert result.returncode != 0
    assert "run `migrate db`" in result.stderr
    assert run_json(env, "migrations", "db")["applied"] == ["0001_initial"]
    assert run_json(env, "migrations", "db")["applied"] == []
    assert run_json(env, "producer", "status")["documents"] == 0


def test_unknown_level_is_a_usage_error(make_settings, database_url):
    result = run_cli(
        cli_env(make_settings(database_url=database_url)), "producer", "search", "q", "--level", "ceo", check=False
    )
    assert result.returncode == 2
    assert "unknown access level 'ceo'" in result.stderr
