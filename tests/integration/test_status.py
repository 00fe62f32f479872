"""Rate, ETA and stuck workers, from the rows workers write to Postgres."""

from contextlib import closing

import pytest
from pydantic import SecretStr

from producer import commands
from producer import status as status_command
from tests.integration.conftest import write_corpus
from workers import metrics
from workers.core.stores import postgres, progress
from workers.engine import EmbedEngine
from workers.heartbeat import Heartbeat
from workers.holdings import Holdings


@pytest.fixture
def settings(make_settings, migrated_url):
    return make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=20, chunk_max_tokens=60)


def test_rate_and_eta_follow_recent_progress(settings, tmp_path):
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        (total,) = conn.execute("SELECT count(*) FROM chunk_embeddings").fetchone()
        # Half done over the last 50 s, at an even pace; the other half pending.
        conn.execute(
            """
            UPDATE chunk_embeddings SET embedded_at = CASE WHEN rn <= %(half)s
                THEN now() - make_interval(secs => 50.0 * rn / %(half)s) END
            FROM (SELECT chunk_id AS id, row_number() OVER (ORDER BY chunk_id) AS rn FROM chunk_embeddings) AS r
            WHERE chunk_embeddings.chunk_id = r.id
            """,
            {"half": total // 2},
        )
    status = status_command.status(settings)
    assert status["backlog"] == total - total // 2
    assert status["rate_chunks_per_s"] == pytest.approx((total // 2) / 50, rel=0.1)
    assert status["eta_s"] == pytest.approx(status["backlog"] / status["rate_chunks_per_s"], rel=0.01)


def test_eta_is_zero_when_done_and_none_when_nothing_moves(settings, tmp_path):
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    assert status_command.status(settings)["eta_s"] == 0.0
    assert progress.eta_seconds(10, 0.0) is None


def holding(count: int) -> Holdings:
    tasks = [([f"{n:032x}" for n in range(count)], None)]
    holdings = Holdings(lambda: tasks)
    holdings.finish = tasks.clear
    return holdings


def test_worker_holding_work_without_progress_is_reported_stuck(settings):
    done = [0]
    heartbeat = Heartbeat(settings, "w1@test", holding(5), lambda: done[0])
    heartbeat.beat()
    assert status_command.status(settings)["stuck_workers"] == []
    with closing(postgres.connect(settings)) as conn:
        conn.execute("UPDATE worker_heartbeats SET last_progress_at = now() - interval '10 minutes'")
    heartbeat.beat()  # alive, still holding 5, nothing done since: no progress
    (stuck,) = status_command.status(settings.model_copy(update={"stuck_after_s": 300}))["stuck_workers"]
    assert (stuck["name"], stuck["chunks_held"]) == ("w1@test", 5)
    assert stuck["seconds_without_progress"] >= 590
    done[0] = 3
    heartbeat.beat()  # progress clears it
    assert status_command.status(settings)["stuck_workers"] == []
    heartbeat.holdings.finish()
    with closing(postgres.connect(settings)) as conn:
        conn.execute("UPDATE worker_heartbeats SET last_progress_at = now() - interval '10 minutes'")
    heartbeat.beat()  # idle is not stuck
    assert status_command.status(settings)["stuck_workers"] == []


def test_a_silent_worker_holding_work_is_gone_not_stuck(settings):
    heartbeat = Heartbeat(settings, "w2@test", holding(4), lambda: 0)
    heartbeat.beat()
    with closing(postgres.connect(settings)) as conn:
        conn.execute(
            "UPDATE worker_heartbeats SET last_seen_at = now() - interval '2 minutes',"
            " last_progress_at = now() - interval '20 minutes'"
        )
    status = status_command.status(settings.model_copy(update={"stuck_after_s": 300}))
    assert status["stuck_workers"] == []
    (gone,) = status["gone_workers"]
    assert (gone["name"], gone["chunks_held"]) == ("w2@test", 4) and gone["seconds_since_seen"] >= 119


def test_eta_says_stalled_when_work_waits_and_nothing_moves(settings, tmp_path):
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        conn.execute("UPDATE chunk_embeddings SET embedded_at = NULL")
    status = status_command.status(settings)
    assert (status["eta_s"], status["stalled"]) == (None, True)


def failed_beats(failure: str) -> float:
    return metrics.HEARTBEAT_FAILURES.labels(failure)._value.get()


def test_a_heartbeat_that_fails_is_a_metric_a_warning_and_unsound_unless_an_outage(settings, caplog):
    def unreadable():  # as Celery's worker state without scheduled_requests (before 5.7) did
        raise AttributeError("module 'celery.worker.state' has no attribute 'scheduled_requests'")

    engine = EmbedEngine(settings, name="w3@test")
    engine.start()
    try:
        assert engine.health()[0]
        before = failed_beats("permanent")
        engine._heartbeat.holdings = Holdings(unreadable)
        engine._heartbeat.beat()
        assert failed_beats("permanent") == before + 1
        assert "heartbeat failed (permanent)" in caplog.text
        sound, why = engine.health()
        assert not sound and "scheduled_requests" in why
        engine._heartbeat.holdings = Holdings(lambda: [])
        engine._heartbeat.settings = settings.model_copy(
            update={"database_url": SecretStr("postgresql://127.0.0.1:1/none")}
        )
        engine._heartbeat._conn.close()
        before = failed_beats("outage")
        engine._heartbeat.beat()  # Postgres out: counted, but waiting cures it
        assert failed_beats("outage") == before + 1
        assert engine.health()[0]
    finally:
        engine.close()
