"""Recovery from every single fault, with no command typed: on real services the tests own and
break (their own redis-server, a Milvus Lite server, a Postgres database closed to clients, Celery
worker processes). Each run ends with every chunk embedded once, nothing failed, and Milvus equal
to Postgres (every vector at its document's level).

The worker-kill test runs at default settings; the others shorten the reconciler's waits
(FLEET_RESEND_AFTER_S, FLEET_RECONCILE_S) to keep the suite fast: the mechanisms are the same.
"""

import json
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from producer import commands
from tests.integration.conftest import cli_env, run_cli, run_json
from tests.integration.faults import ClosableDatabase, MilvusServer, RedisServer, Workers, counts, wait_until
from tests.textgen import document
from workers.core.access import AccessLevel
from workers.core.stores import catalog, milvus, outbox, postgres

pytestmark = pytest.mark.integration

# ~480 chunks of 20–60 fake tokens; the simulated model takes ~15 s for them on one worker.
SLOW_MODEL = "null:64@2000"
QUICK_RECONCILER = {"FLEET_RECONCILE_S": "2", "FLEET_RESEND_AFTER_S": "5", "FLEET_WORKER_GONE_AFTER_S": "10"}


def write_documents(root: Path, count: int = 40) -> Path:
    levels = list(AccessLevel)
    for index in range(count):
        path = root / f"dept-{index % 4}/doc-{index:03d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = document("vi" if index % 2 else "en", 14, seed=index, title=f"Document {index}")
        path.write_text(f"---\naccess_level: {levels[index % 4].name}\n---\n{text}", encoding="utf-8")
    return root


@pytest.fixture
def redis_server(tmp_path) -> RedisServer:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def milvus_service(tmp_path) -> MilvusServer:
    server = MilvusServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def closable_database(pg_admin, database_url) -> ClosableDatabase:
    database = ClosableDatabase(pg_admin, database_url)
    yield database
    database.open()


@pytest.fixture
def fleet(make_settings, migrated_url, redis_server, milvus_service, tmp_path):
    """Settings, the environment of a fleet process, and a worker launcher (stopped at the end)."""
    settings = make_settings(
        database_url=migrated_url,
        broker_url=redis_server.url,
        milvus_uri=milvus_service.uri,
        model=SLOW_MODEL,
        chunk_min_tokens=20,
        chunk_max_tokens=60,
        task_chunks=8,
        # Few tasks held per worker: most wait in the broker, where a fault can lose them.
        worker_concurrency=4,
        heartbeat_s=1,
    )
    (tmp_path / "logs").mkdir()
    workers = Workers(cli_env(settings), tmp_path / "logs")
    yield settings, workers
    workers.stop_all()
    print(workers.notable())


def ingest(settings, docs: Path) -> dict:
    return run_json(cli_env(settings), "producer", "ingest", str(docs))


def assert_whole(settings) -> None:
    """Every chunk embedded once for every kept version, nothing failed, Milvus equal to Postgres,
    every vector at its document's level."""
    with closing(postgres.connect(settings)) as conn:
        levels = dict(
            conn.execute("SELECT c.id, d.access_level FROM chunks c JOIN documents d ON d.id = c.document_id")
        )
        (failures,) = conn.execute("SELECT count(*) FROM failures").fetchone()
        versions = [v for v in catalog.all_versions(conn) if v.state != "retired"]
        done = {
            v.collection: {
                cid
                for (cid,) in conn.execute(
                    "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s AND embedded_at IS NOT NULL",
                    (v.id,),
                )
            }
            for v in versions
        }
        assert outbox.pending(conn) == 0
    assert failures == 0
    client = milvus.connect(settings)
    for version in versions:
        milvus.ensure_loaded(client, version.collection)
        rows = client.query(version.collection, filter="", output_fields=["chunk_id", "access_level"], limit=16384)
        stored = {row["chunk_id"]: row["access_level"] for row in rows}
        assert len(rows) == len(stored) == len(levels), (version.collection, len(rows), len(levels))
        assert set(stored) == set(levels) == done[version.collection]
        assert all(stored[cid] == levels[cid] for cid in stored), "a vector is not at its document's level"


def test_the_only_worker_killed_and_a_new_one_started_at_default_settings(fleet, tmp_path):
    settings, workers = fleet
    defaults = {"FLEET_HEARTBEAT_S": "5"}  # everything else at its default
    workers.start("first", **defaults)
    total = ingest(settings, write_documents(tmp_path / "docs"))["chunks_enqueued"]
    assert wait_until(lambda: counts(settings.database_url.get_secret_value())["embedded"] > total // 5, 90)
    workers.kill("first")
    killed_at = time.monotonic()
    assert counts(settings.database_url.get_secret_value())["embedded"] < total, "finished before the kill"
    workers.start("second", **defaults)
    recovered = wait_until(lambda: counts(settings.database_url.get_secret_value())["embedded"] == total, 150)
    assert recovered is not None, f"not recovered: {counts(settings.database_url.get_secret_value())}"
    print(f"worker SIGKILLed: every chunk embedded {time.monotonic() - killed_at:.0f}s after the kill")
    assert time.monotonic() - killed_at <= 120
    assert_whole(settings)


def recovers_from(fleet, tmp_path, fault: Callable[[], None], what: str, **worker_env: str) -> None:
    """Two workers embed a folder; `fault` strikes once a fifth is done. The run must finish on
    its own, nothing failed, every chunk once and at its level."""
    settings, workers = fleet
    for name in ("w1", "w2"):
        workers.start(name, **worker_env, **QUICK_RECONCILER)
    total = ingest(settings, write_documents(tmp_path / "docs"))["chunks_enqueued"]
    url = settings.database_url.get_secret_value()
    assert wait_until(lambda: counts(url)["embedded"] > total // 5, 90)
    fault()
    back = time.monotonic()
    assert wait_until(lambda: counts(url)["embedded"] == total, 180), counts(url)
    print(f"{what}: every chunk embedded {time.monotonic() - back:.0f}s after it was back")
    assert counts(url)["failed"] == 0
    assert_whole(settings)


def test_redis_killed_and_restarted_empty(fleet, redis_server, tmp_path):
    def restart_empty() -> None:  # every queued and reserved message is gone
        redis_server.kill()
        time.sleep(3)
        redis_server.start()

    recovers_from(fleet, tmp_path, restart_empty, "Redis restarted empty")


def test_redis_down_during_an_ingest_exits_0_and_its_chunks_are_embedded_once_it_is_back(fleet, redis_server, tmp_path):
    settings, workers = fleet
    workers.start("w1", **QUICK_RECONCILER)
    redis_server.kill()  # the broker is out for the whole ingest, and the worker loses it too
    result = run_cli(cli_env(settings), "producer", "ingest", str(write_documents(tmp_path / "docs")), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["chunks_enqueued"] == 0
    assert report["chunks_unsent"] > 0 and "broker" in " ".join(report["warnings"])
    url = settings.database_url.get_secret_value()
    assert counts(url)["pending"] == report["chunks_unsent"]
    redis_server.start()
    back = time.monotonic()
    assert wait_until(lambda: counts(url)["embedded"] == report["chunks_unsent"], 180), counts(url)
    print(f"Redis down during the ingest: every chunk embedded {time.monotonic() - back:.0f}s after it was back")
    assert_whole(settings)


def test_postgres_closed_to_clients_mid_run(fleet, closable_database, tmp_path):
    def close_15s() -> None:
        closable_database.close()
        time.sleep(15)
        closable_database.open()

    recovers_from(fleet, tmp_path, close_15s, "Postgres closed 15 s")


def test_milvus_down_40s_longer_than_the_attempts_budget(fleet, milvus_service, tmp_path):
    def down_40s() -> None:
        milvus_service.kill()
        time.sleep(40)
        milvus_service.start()

    # Two deliveries per chunk: without outages given back, 40 s of Milvus down would fail them all.
    recovers_from(fleet, tmp_path, down_40s, "Milvus down 40 s", FLEET_MAX_ATTEMPTS="2")


def test_a_failed_vector_delete_after_a_level_change_is_carried_out_by_the_reconciler(fleet, tmp_path, monkeypatch):
    settings, workers = fleet
    docs = write_documents(tmp_path / "docs", count=8)
    workers.start("w1", **QUICK_RECONCILER)
    total = ingest(settings, docs)["chunks_enqueued"]
    url = settings.database_url.get_secret_value()
    assert wait_until(lambda: counts(url)["embedded"] == total, 120)
    moved = docs / "dept-3/doc-003.md"  # director_only
    moved.write_text(moved.read_text().replace("director_only", "public"), encoding="utf-8")

    def milvus_refuses(*args, **kwargs):  # the one fault a live Milvus cannot be made to give on cue
        raise ConnectionError("Milvus dropped the connection (injected)")

    monkeypatch.setattr(milvus, "delete", milvus_refuses)
    report = commands.ingest(settings, docs, None, wait=False)
    monkeypatch.undo()
    assert report.documents_changed == 1 and "Milvus is out" in " ".join(report.warnings)
    # The outbox row is not looked at here: the reconciler's quick rounds may carry it out before
    # this line runs. Had the delete not been recorded, the old-level vectors would stay in
    # Milvus as orphans, and assert_whole below would name them.
    # No command typed: the workers' reconciler deletes the old-level vectors, the workers embed the new.
    assert wait_until(lambda: _outbox_empty(settings) and counts(url)["pending"] == 0, 60)
    assert_whole(settings)


def _outbox_empty(settings) -> bool:
    with closing(postgres.connect(settings)) as conn:
        return outbox.pending(conn) == 0


def test_verify_repair_under_concurrent_writes_deletes_only_true_orphans(fleet, tmp_path):
    settings, workers = fleet
    workers.start("w1", **QUICK_RECONCILER)
    total = ingest(settings, write_documents(tmp_path / "docs"))["chunks_enqueued"]
    url = settings.database_url.get_secret_value()
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        live = catalog.live_version(conn)
    orphan = milvus.VectorRow("f" * 32, 999_999, 0, __import__("numpy").full(64, 0.125, dtype="float32"), "gone")
    milvus.upsert(client, live.collection, [orphan], keyword=True)
    env = cli_env(settings)
    repaired = []
    while counts(url)["embedded"] < total:
        result = run_cli(env, "migrations", "verify", "--repair", "--json", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        checks = json.loads(result.stdout)
        repaired += [check for check in checks if check["repaired"]]
    assert wait_until(lambda: counts(url)["embedded"] == total, 60)
    assert any(check["orphans"] >= 1 for check in repaired)  # the planted orphan went
    final = run_cli(env, "migrations", "verify", "--json")
    assert final.returncode == 0, final.stdout
    assert_whole(settings)
