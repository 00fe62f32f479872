"""The embedded default end to end, as a user runs it: no server settings at all.

Embedded Postgres (pgserver) and a Milvus Lite file under FLEET_DATA_DIR, tasks in-process,
and a real model (all-MiniLM-L6-v2) so that retrieval quality is real.
"""

import os

from tests.integration.conftest import REPO, run_json, write_corpus


def embedded_env(data_dir, model: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEET_")}
    return {**env, "FLEET_DATA_DIR": str(data_dir), "FLEET_MODEL": model}


def test_embedded_default_ingests_searches_and_reingests_nothing(tmp_path, minilm):
    env = embedded_env(tmp_path / "fleet", minilm)
    docs = write_corpus(tmp_path / "docs")

    report = run_json(env, "producer", "ingest", str(docs))
    assert report["documents_new"] == 5
    assert "reads at most 256 tokens" in report["warnings"][0]

    status = run_json(env, "producer", "status")
    assert status["embedded"] == status["chunks"] == report["chunks_enqueued"]
    assert status["index"]["dim"] == 384

    hits = run_json(env, "producer", "search", "When does the cafeteria open?", "--level", "public")
    assert hits[0]["source_path"] == "handbook/welcome.md"
    assert all(hit["access_level"] == "public" for hit in hits)

    hits = run_json(env, "producer", "search", "salary bands for engineers", "--level", "manager_only")
    assert hits[0]["source_path"] == "finance/salary-bands.md"

    assert run_json(env, "producer", "ingest", str(docs))["chunks_enqueued"] == 0
    assert (tmp_path / "fleet" / "milvus.db").exists()
    assert (tmp_path / "fleet" / "postgres" / "PG_VERSION").exists()


def test_sample_docs_all_have_levels_and_ingest_cleanly(tmp_path):
    env = embedded_env(tmp_path / "fleet", "fake")
    report = run_json(env, "producer", "ingest", str(REPO / "ops" / "sample-docs"))
    assert report["files_seen"] >= 8
    assert report["documents_rejected"] == 0, report["rejected"]
    levels = {
        hit["access_level"]
        for hit in run_json(env, "producer", "search", "policy", "--level", "director_only", "--top-k", "50")
    }
    assert levels == {"public", "employee_only", "manager_only", "director_only"}
