"""Blue-green re-index on real Postgres and Milvus Lite: another model and dimension with search
running throughout, dual writes while building, the dimension-only shortcut, the quality gate,
resuming a killed run, rollback and cleanup."""

import json
import shutil
import threading
from contextlib import closing

import numpy as np
import pytest

from migrations import commands as migrate
from producer import commands
from producer import status as status_command
from tests.integration.conftest import cli_env, run_cli, run_json, write_corpus
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput
from workers.core.sending import make_tasks
from workers.core.stores import catalog, milvus, postgres, progress
from workers.embedding import load_encoder
from workers.embedding.base import fit_dimension
from workers.engine import EmbedEngine

QUERY = "When does the cafeteria open?"


def reindex(settings, model, dim=None, **options):
    defaults = {"dry_run": False, "eval_file": None, "cutover": True, "force": False, "max_regression": 0.02}
    return migrate.run_reindex(settings, model, dim, **{**defaults, **options})


class SearchLoop(threading.Thread):
    """Searches over and over as `public`, recording errors and empty answers."""

    def __init__(self, settings):
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.searches = 0
        self.failures: list[str] = []
        self.sources: set[str] = set()

    def run(self):
        while not self.stop.is_set():
            try:
                hits = commands.search(self.settings, QUERY, AccessLevel.public, 3).hits
                if not hits:
                    self.failures.append("empty")
                self.sources.add(hits[0].source_path if hits else "")
            except Exception as err:  # every failure is the finding
                self.failures.append(repr(err))
            self.searches += 1

    def finish(self):
        self.stop.set()
        self.join(60)


@pytest.fixture
def minilm_settings(make_settings, migrated_url, minilm):
    return make_settings(database_url=migrated_url, model=minilm)


def test_move_to_another_model_and_dimension_with_search_running_then_roll_back(minilm_settings, qwen_tiny, tmp_path):
    settings = minilm_settings
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    loop = SearchLoop(settings)
    loop.start()

    built = reindex(settings, qwen_tiny, cutover=False)
    assert not built["cutover"] and built["verification"]["problems"] == []
    assert status_command.status(settings)["index"]["dim"] == 384  # blue still serves

    # Ingested while green is building: written to both versions.
    (docs / "memo.md").write_text("---\naccess_level: public\n---\nThe cafeteria opens at nine on Saturdays.\n")
    assert commands.ingest(settings, docs, None, wait=False).documents_new == 1

    done = reindex(settings, qwen_tiny)  # resumes the built version, verifies, cuts over
    assert done["cutover"] and done["green"] == built["green"]
    assert done["backfill"]["chunks"] == 0
    status = status_command.status(settings)
    assert (status["index"]["model"], status["index"]["dim"]) == (qwen_tiny, 64)
    assert status["embedded"] == status["chunks"]
    hits = commands.search(settings, "cafeteria opens at nine on Saturdays", AccessLevel.public, 10).hits
    assert "memo.md" in {hit.source_path for hit in hits}

    # Ingested while green is live: blue (retired) gets no rows, so rollback must catch it up.
    (docs / "late.md").write_text("---\naccess_level: public\n---\nThe rooftop garden opens in spring.\n")
    commands.ingest(settings, docs, None, wait=False)
    rolled = migrate.rollback(settings)
    assert rolled["to"] == "chunks_v1" and rolled["chunks_caught_up"] >= 1
    assert (
        commands.search(settings, "rooftop garden opens in spring", AccessLevel.public, 1).hits[0].source_path
        == "late.md"
    )
    assert status_command.status(settings)["index"]["dim"] == 384
    # Its vector, dual-written while green was built (dense: Milvus Lite's BM25 statistics are per
    # segment, and the memo is a segment of its own, which ties it with the handbook in hybrid).
    assert (
        commands.search(settings, "cafeteria opens at nine on Saturdays", AccessLevel.public, 1, "dense")
        .hits[0]
        .source_path
        == "memo.md"
    )
    loop.finish()
    assert loop.searches > 10
    assert loop.failures == []


def test_dry_run_plans_and_changes_nothing(minilm_settings, qwen_tiny, tmp_path):
    commands.ingest(minilm_settings, write_corpus(tmp_path / "docs"), None, wait=False)
    plan = reindex(minilm_settings, qwen_tiny, dry_run=True)["plan"]
    assert plan["chunks"] == status_command.status(minilm_settings)["chunks"]
    assert plan["tokens"] > plan["chunks"] and plan["dim"] == 64
    assert plan["storage_bytes"] > plan["chunks"] * 64 * 4
    assert plan["estimated_seconds"] > 0 and plan["estimate_basis"]
    assert [v["state"] for v in migrate.status(minilm_settings)] == ["live"]


def test_same_model_and_dimension_is_refused(minilm_settings, minilm, tmp_path):
    commands.ingest(minilm_settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with pytest.raises(InvalidInput, match="nothing to re-index"):
        reindex(minilm_settings, minilm)


def test_dimension_only_shortcut_equals_reembedding(make_settings, migrated_url, qwen_tiny, tmp_path):
    settings = make_settings(database_url=migrated_url, model=qwen_tiny, chunk_max_tokens=300)
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    report = reindex(settings, qwen_tiny, dim=32)
    assert report["plan"]["derive_from_version"] == 1 and report["cutover"]
    with closing(postgres.connect(settings)) as conn:
        rows = conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        green = catalog.live_version(conn)
    client = milvus.connect(settings)
    stored = {r["chunk_id"]: r["vector"] for r in client.get(green.collection, ids=[r[0] for r in rows])}
    expected = fit_dimension(load_encoder(qwen_tiny, "cpu").encode_documents([r[1] for r in rows]), 32)
    cosines = [float(np.dot(stored[chunk_id], vector)) for (chunk_id, _), vector in zip(rows, expected, strict=True)]
    assert min(cosines) >= 0.999


EVAL_CASES = [
    {"query": "When does the cafeteria open?", "level": "public", "expected_document": "handbook/welcome.md"},
    {"query": "salary bands for engineers", "level": "manager_only", "expected_document": "finance/salary-bands.md"},
    {"query": "acquire Blue River Freight", "level": "director_only", "expected_document": "board/acquisition.md"},
]


def write_cases(path):
    path.write_text("\n".join(json.dumps(case) for case in EVAL_CASES))
    return path


def test_the_quality_gate_from_the_command_line_in_fresh_processes(minilm_settings, minilm, qwen_tiny, tmp_path):
    """Each command in a process of its own, as a user runs them: the gate compares blue (loaded
    from a Milvus file reopened cold) with green, refuses a worse one naming both scores, passes a
    near-equal one, and says so when it did not run."""
    env = {**cli_env(minilm_settings), "FLEET_MODEL": minilm}
    run_cli(env, "producer", "ingest", str(write_corpus(tmp_path / "docs")))
    cases = str(write_cases(tmp_path / "eval.jsonl"))
    worse = run_cli(env, "migrations", "reindex", "--model", qwen_tiny, "--eval", cases, check=False)
    assert worse.returncode == 1, worse.stderr
    assert "not cutting over" in worse.stderr and "below blue's 1.000" in worse.stderr
    assert run_json(env, "producer", "status")["index"]["model"] == minilm  # blue stays live

    twin = tmp_path / "minilm-twin"  # the same weights under another name: a near-equal model
    shutil.copytree(minilm, twin)
    passed = run_json(env, "migrations", "reindex", "--model", str(twin), "--eval", cases)
    assert passed["cutover"] and passed["eval"]["mrr_drop"] <= 0.02
    assert run_json(env, "producer", "status")["index"]["model"] == str(twin)

    # Without --eval it cuts over (here: a dimension cut, derived from the live vectors), with a warning.
    ungated = run_cli(env, "migrations", "reindex", "--model", str(twin), "--dim", "128", "--json", check=False)
    assert ungated.returncode == 0, ungated.stderr
    assert "no quality gate ran" in ungated.stderr and json.loads(ungated.stdout)["warnings"]


def test_killed_reindex_resumes_without_redoing_work(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=20, chunk_max_tokens=60)
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        from migrations import reindex as rx

        green = rx.start_green(conn, milvus.connect(settings), rx.make_plan(conn, "fake:32", 32))
        pending = progress.pending_chunk_ids(conn, green.id)
    half = pending[: len(pending) // 2]
    engine = EmbedEngine(settings)  # the part a killed run finished
    [future.result(60) for future in [engine.submit(task) for task in make_tasks(green.id, half, 8)]]
    engine.close()

    report = reindex(settings, "fake:32")
    assert report["green"]["id"] == green.id
    assert report["backfill"]["chunks"] == len(pending) - len(half)
    assert report["cutover"]


def test_status_and_cleanup(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    reindex(settings, "fake:48")
    states = {v["name"]: (v["state"], v["embedded"] == v["total"]) for v in migrate.status(settings)}
    assert states == {"chunks_v1": ("retired", True), "chunks_v2": ("live", True)}
    assert migrate.cleanup(settings) == ["chunks_v1"]
    assert not milvus.connect(settings).has_collection("chunks_v1")
    with pytest.raises(InvalidInput, match="no retired index version"):
        migrate.rollback(settings)


def test_cutover_waits_for_chunks_green_lacks(make_settings, migrated_url, tmp_path):
    from migrations import reindex as rx

    settings = make_settings(database_url=migrated_url, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        green = rx.start_green(conn, client, rx.make_plan(conn, "fake:32", 32))  # nothing embedded for it yet
        assert rx.cutover(conn, client, green) is False
        assert catalog.live_version(conn).id == 1
    assert milvus.alias_target(client) == "chunks_v1"


def test_abort_drops_the_version_being_built(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    reindex(settings, "fake:32", cutover=False)
    assert migrate.cleanup(settings, state="building") == ["chunks_v2"]
    assert [v["state"] for v in migrate.status(settings)] == ["live"]
    assert not milvus.connect(settings).has_collection("chunks_v2")
    report = commands.ingest(settings, write_corpus(tmp_path / "more", [("x.md", "public", "New.")]), None, wait=False)
    assert report.chunks_enqueued == 1  # written to the live version only


def test_verify_finds_and_repairs_orphans_and_missing_vectors(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    assert [c["consistent"] for c in migrate.verify(settings, repair=False)] == [True]
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        lost = conn.execute("SELECT id FROM chunks LIMIT 2").fetchone()[0]
    client.delete("chunks_v1", ids=[lost])  # a vector lost
    orphan = milvus.VectorRow("f" * 32, 1, 0, np.full(64, 0.125, dtype=np.float32), "a chunk that is gone")
    milvus.upsert(client, "chunks_v1", [orphan], keyword=True)  # a vector whose chunk is gone

    (check,) = migrate.verify(settings, repair=False)
    assert (check["orphans"], check["missing"], check["consistent"]) == (1, 1, False)
    (check,) = migrate.verify(settings, repair=True)
    assert check["repaired"]
    (check,) = migrate.verify(settings, repair=False)
    assert (
        check["consistent"]
        and check["in_milvus"] == check["done_in_postgres"] == status_command.status(settings)["chunks"]
    )


def test_a_quantised_model_is_a_new_index_version_gated_like_any_other(minilm_settings, minilm, tmp_path):
    settings = minilm_settings
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    cases = write_cases(tmp_path / "eval.jsonl")
    report = migrate.run_reindex(settings, minilm, None, False, cases, True, False, 0.02, quantize="int8")
    assert report["cutover"] and report["green"]["quantize"] == "int8"
    assert report["eval"]["mrr_drop"] <= 0.02  # int8 retrieves as well here
    with closing(postgres.connect(settings)) as conn:
        live = catalog.live_version(conn)
    assert (live.model, live.quantize) == (minilm, "int8")
    hits = commands.search(settings, EVAL_CASES[2]["query"], AccessLevel.director_only, 3).hits
    assert hits[0].source_path == "board/acquisition.md"  # queries run the quantised model too
    with pytest.raises(InvalidInput, match="nothing to re-index"):
        migrate.run_reindex(settings, minilm, None, True, None, True, False, 0.02, quantize="int8")


def test_a_cutover_is_refused_while_chunks_failed_for_green_and_retry_embeds_them(
    make_settings, migrated_url, tmp_path
):
    """Chunks that failed during the catch-up would silently miss from the live index."""
    from migrations import reindex as rx

    settings = make_settings(database_url=migrated_url, model="fake:64")
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    reindex(settings, "fake:32", cutover=False)  # green built and verified
    (docs / "memo.md").write_text("---\naccess_level: public\n---\nThe cafeteria opens at nine on Saturdays.\n")
    commands.ingest(settings, docs, None, wait=False)
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        green = catalog.all_versions(conn)[-1]
        (chunk_id,) = progress.pending_chunk_ids(conn, green.id) or [
            cid for (cid,) in conn.execute("SELECT id FROM chunks WHERE document_id = (SELECT max(id) FROM documents)")
        ]
        # As if its worker had given up on it: not embedded for green, recorded as failed.
        conn.execute(
            "UPDATE chunk_embeddings SET embedded_at = NULL WHERE chunk_id = %s AND index_version_id = %s",
            (chunk_id, green.id),
        )
        client.delete(green.collection, ids=[chunk_id])
        progress.record_failure(conn, green.id, [chunk_id], "attempts", "gave up after 8 deliveries")
        with pytest.raises(rx.CutoverRefused, match=r"1 chunks failed .*memo\.md .*gave up after 8 deliveries"):
            rx.cutover(conn, client, green)
        assert catalog.live_version(conn).id == 1
    with pytest.raises(InvalidInput, match=r"9 of 10 chunks embedded \(1 failed\)"):
        reindex(settings, "fake:32")  # the command refuses too, at its verification
    assert migrate.retry(settings) == {"chunks_enqueued": 1}
    assert reindex(settings, "fake:32")["cutover"]
    with closing(postgres.connect(settings)) as conn:
        assert progress.progress(conn, catalog.live_version(conn).id).failed == 0


def test_rollback_verifies_the_version_it_goes_back_to(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, model="fake:64")
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    reindex(settings, "fake:32")
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        blue = catalog.all_versions(conn)[0]
        (chunk_id,) = conn.execute(
            "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s LIMIT 1", (blue.id,)
        ).fetchone()
    client.delete(blue.collection, ids=[chunk_id])  # blue lost a vector while retired
    with pytest.raises(InvalidInput, match="chunks_v1 is not ready to serve: Milvus holds"):
        migrate.rollback(settings)
    assert migrate.rollback(settings, force=True)["to"] == "chunks_v1"
