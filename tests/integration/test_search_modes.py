"""Search modes on real Milvus (Lite) and Postgres: identifiers found whole in the keyword and
hybrid modes, near misses below them, NFD queries, a version built before keyword search (dense,
and saying so), its `--same-model` re-index, and the quality gate in the mode it is asked for.

The documents are official-looking Vietnamese texts headed by their numbers, with near-miss
numbers among them and citing each other (tests/legalgen.py); the fake model keeps it fast, so
the dense mode carries no meaning here: what is measured is the identifier and the BM25 path.
"""

import json
import unicodedata
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from migrations import commands as migrate
from producer import commands, keys
from tests import legalgen
from tests.integration.conftest import cli_env, run_cli, run_json
from tests.integration.test_serve import bearer, running_service
from workers.core.access import AccessLevel
from workers.core.constants import DENSE, HYBRID, KEYWORD, STATE_LIVE
from workers.core.errors import InvalidInput
from workers.core.stores import catalog, milvus, postgres

FAMILIES = 5


@pytest.fixture(scope="module")
def documents() -> list[legalgen.LegalDocument]:
    return legalgen.build(FAMILIES, seed=3, sentences_per_document=4)


def legal_settings(make_settings, migrated_url, **overrides):
    return make_settings(
        database_url=migrated_url, model="fake:64", chunk_min_tokens=40, chunk_max_tokens=120, **overrides
    )


def ingested(settings, documents, root: Path) -> None:
    legalgen.write(documents, root)
    report = commands.ingest(settings, root, None, wait=False)
    assert not report.rejected and report.documents_new == len(documents), report.rejected


def first_document(settings, query: str, mode: str, level=AccessLevel.director_only) -> str:
    found = commands.search(settings, query, level, 10, mode)
    assert found.mode == mode
    return found.hits[0].source_path


def test_a_number_finds_the_document_it_heads_above_its_near_misses(make_settings, migrated_url, tmp_path, documents):
    settings = legal_settings(make_settings, migrated_url)
    ingested(settings, documents, tmp_path / "docs")
    for document in documents:
        number = str(document.number)
        typed = [
            number,
            number.lower(),
            f"{document.number.kind_word} số {number}",
            legalgen.without_diacritics(number),
        ]
        for query in typed:
            for mode in (KEYWORD, HYBRID):
                assert first_document(settings, query, mode) == document.path, (query, mode)
        # Its near misses are in the corpus and cite it: they rank below, in both modes.
        ranked = [hit.source_path for hit in commands.search(settings, number, AccessLevel.director_only, 50).hits]
        misses = [other.path for other in documents if other is not document and other.path in ranked]
        assert misses and all(ranked.index(document.path) < ranked.index(path) for path in misses)


def test_every_mode_keeps_to_the_reader_s_level(make_settings, migrated_url, tmp_path, documents):
    settings = legal_settings(make_settings, migrated_url)
    ingested(settings, documents, tmp_path / "docs")
    level_of = {document.path: document.level for document in documents}
    for document in documents[:6]:
        for reader in AccessLevel:
            for mode in (DENSE, KEYWORD, HYBRID):
                hits = commands.search(settings, str(document.number), reader, 50, mode).hits
                assert all(level_of[hit.source_path] <= reader for hit in hits), (mode, reader)
                if document.level <= reader and mode != DENSE:
                    assert hits[0].source_path == document.path


def test_a_query_typed_in_nfd_finds_the_nfc_text(make_settings, migrated_url, tmp_path, documents):
    settings = legal_settings(make_settings, migrated_url)
    ingested(settings, documents, tmp_path / "docs")
    _, sentence = documents[0].sentences[0]
    phrase = " ".join(sentence.split()[:8])
    decomposed = unicodedata.normalize("NFD", phrase)
    assert decomposed != phrase
    for mode in (KEYWORD, HYBRID):
        nfc = commands.search(settings, phrase, AccessLevel.director_only, 5, mode).hits
        nfd = commands.search(settings, decomposed, AccessLevel.director_only, 5, mode).hits
        assert [hit.chunk_id for hit in nfd] == [hit.chunk_id for hit in nfc]
        assert nfc[0].source_path == documents[0].path


def test_hybrid_weights_change_the_ranking_and_not_the_filter(make_settings, migrated_url, tmp_path, documents):
    settings = legal_settings(make_settings, migrated_url)
    ingested(settings, documents, tmp_path / "docs")
    _, sentence = documents[1].sentences[0]
    only_keyword = commands.search(
        settings, sentence, AccessLevel.public, 10, HYBRID, milvus.Weights(dense=0, keyword=1)
    ).hits
    keyword = commands.search(settings, sentence, AccessLevel.public, 10, KEYWORD).hits
    assert [hit.chunk_id for hit in only_keyword] == [hit.chunk_id for hit in keyword]
    with pytest.raises(InvalidInput, match="hybrid"):
        commands.search(settings, sentence, AccessLevel.public, 10, DENSE, milvus.Weights(1, 1))


def dense_only_index(settings, documents, root: Path) -> None:
    """An index as one built before keyword search: its collection holds vectors only."""
    with closing(postgres.connect(settings)) as conn:
        catalog.create_version(conn, "fake:64", 64, STATE_LIVE, analyzer=None)
    ingested(settings, documents, root)


def test_a_version_without_the_text_serves_dense_and_says_so(
    make_settings, migrated_url, milvus_server, tmp_path, documents
):
    settings = legal_settings(make_settings, migrated_url, milvus_uri=milvus_server)
    dense_only_index(settings, documents, tmp_path / "docs")
    assert commands.search(settings, "45/2019/NĐ-CP", AccessLevel.public, 5).mode == DENSE
    with pytest.raises(InvalidInput, match="--same-model"):
        commands.search(settings, "45/2019/NĐ-CP", AccessLevel.public, 5, KEYWORD)
    with closing(postgres.connect(settings)) as conn:
        key = keys.create(conn, "intranet", AccessLevel.director_only)
    with running_service(settings, tmp_path / "serve.log") as url:
        info = httpx.get(f"{url}/info").json()["index"]
        answer = httpx.post(f"{url}/v1/search", headers=bearer(key), json={"query": "Nghị định"}, timeout=30)
        refused = httpx.post(
            f"{url}/v1/search", headers=bearer(key), json={"query": "Nghị định", "mode": "hybrid"}, timeout=30
        )
        schema = httpx.get(f"{url}/openapi.json").json()
    assert (info["modes"], info["default_mode"]) == (["dense"], "dense")
    assert answer.status_code == 200 and answer.json()["mode"] == "dense"
    assert refused.status_code == 422 and "--same-model" in refused.json()["detail"]
    mode_schema = schema["components"]["schemas"]["SearchRequest"]["properties"]["mode"]
    assert {"enum": ["dense"], "type": "string"} in mode_schema["anyOf"]


def vectors(client, collection: str) -> dict[str, np.ndarray]:
    milvus.ensure_loaded(client, collection)
    rows = client.query(collection, filter="", output_fields=["chunk_id", "vector"], limit=10_000)
    return {row["chunk_id"]: np.array(row["vector"], dtype=np.float32) for row in rows}


def test_same_model_reindex_keeps_every_vector_and_adds_keyword_search(
    make_settings, migrated_url, milvus_server, tmp_path, documents
):
    settings = legal_settings(make_settings, migrated_url, milvus_uri=milvus_server)
    dense_only_index(settings, documents, tmp_path / "docs")
    cases = tmp_path / "numbers.jsonl"
    cases.write_text(
        "".join(
            json.dumps(query.to_dict()) + "\n" for query in legalgen.queries(documents) if query.kind == "identifier"
        )
    )
    env = cli_env(settings)
    plan = run_json(env, "migrations", "reindex", "--same-model", "--dry-run")["plan"]
    assert (plan["model"], plan["dim"], plan["derive_from_version"], plan["analyzer"]) == ("fake:64", 64, 1, "standard")
    report = run_json(env, "migrations", "reindex", "--same-model", "--eval", str(cases), "--mode", "hybrid")
    assert report["cutover"] and report["green"]["name"] == "chunks_v2"
    # Blue cannot search by keyword: it is measured as it served, green as asked.
    assert (report["eval"]["blue"]["mode"], report["eval"]["green"]["mode"]) == ("dense", "hybrid")
    assert report["eval"]["green"]["hit_at_1"] > report["eval"]["blue"]["hit_at_1"]

    client = milvus.connect(settings)
    before, after = vectors(client, "chunks_v1"), vectors(client, "chunks_v2")
    assert before.keys() == after.keys() and len(after) == report["backfill"]["chunks"]
    assert all(np.array_equal(before[chunk_id], after[chunk_id]) for chunk_id in before)
    assert commands.search(settings, str(documents[0].number), AccessLevel.director_only, 5).mode == HYBRID
    assert first_document(settings, str(documents[0].number), KEYWORD) == documents[0].path

    again = run_cli(env, "migrations", "reindex", "--same-model", check=False)
    assert again.returncode != 0 and "nothing to re-index" in again.stderr


def test_the_gate_runs_in_the_mode_it_is_asked_for(make_settings, migrated_url, tmp_path, documents):
    settings = legal_settings(make_settings, migrated_url)
    ingested(settings, documents, tmp_path / "docs")
    cases = tmp_path / "eval.jsonl"
    cases.write_text("".join(json.dumps(query.to_dict()) + "\n" for query in legalgen.queries(documents)[:30]))
    keyword = migrate.run_reindex(settings, "fake:48", None, False, cases, False, False, 1.0, mode=KEYWORD)
    assert (keyword["eval"]["blue"]["mode"], keyword["eval"]["green"]["mode"]) == (KEYWORD, KEYWORD)
    assert DENSE not in keyword["eval"]
    # Unasked: as each serves (hybrid), and dense too, where a worse model cannot hide behind BM25.
    served = migrate.run_reindex(settings, "fake:48", None, False, cases, False, False, 1.0)
    assert (served["eval"]["blue"]["mode"], served["eval"]["green"]["mode"]) == (HYBRID, HYBRID)
    assert (served["eval"][DENSE]["blue"]["mode"], served["eval"][DENSE]["green"]["mode"]) == (DENSE, DENSE)
    assert commands.evaluate_live(settings, cases, KEYWORD)["mode"] == KEYWORD
