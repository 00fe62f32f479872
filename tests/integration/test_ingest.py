"""Ingest, re-ingest, change and search on the real Postgres and Milvus Lite, tasks in-process."""

from contextlib import closing

import pytest

from producer import commands, dispatch
from producer import status as status_command
from tests.integration.conftest import CORPUS, write_corpus
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput
from workers.core.stores import catalog, milvus, postgres, progress


@pytest.fixture
def settings(make_settings, migrated_url):
    return make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=60, chunk_max_tokens=120)


def chunk_ids(settings, source_path: str) -> set[str]:
    with closing(postgres.connect(settings)) as conn:
        rows = conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.source_path = %s",
            (source_path,),
        ).fetchall()
    return {row[0] for row in rows}


def milvus_ids(settings, ids: set[str]) -> set[str]:
    client = milvus.connect(settings)
    with closing(postgres.connect(settings)) as conn:
        collection = catalog.live_version(conn).collection
    milvus.ensure_loaded(client, collection)
    return {row["chunk_id"] for row in client.get(collection, ids=sorted(ids), output_fields=["chunk_id"])}


def test_ingest_embeds_everything_then_reingest_enqueues_nothing(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    first = commands.ingest(settings, docs, None, wait=False)
    assert (first.files_seen, first.documents_new, first.documents_rejected) == (5, 5, 0)
    status = status_command.status(settings)
    assert status["chunks"] == first.chunks_enqueued > 5  # the long documents split
    assert (status["embedded"], status["pending"], status["failed"]) == (status["chunks"], 0, 0)
    assert status["index"] == {"name": "chunks_v1", "model": "fake:64", "dim": 64}

    with closing(postgres.connect(settings)) as conn:
        versions = conn.execute("SELECT id, xmin::text FROM documents ORDER BY id").fetchall()
    again = commands.ingest(settings, docs, None, wait=False)
    assert (again.documents_unchanged, again.chunks_enqueued, again.documents_new) == (5, 0, 0)
    with closing(postgres.connect(settings)) as conn:  # nothing rewritten: a million rows stay as they are
        assert conn.execute("SELECT id, xmin::text FROM documents ORDER BY id").fetchall() == versions
    client = milvus.connect(settings)
    assert milvus.count(client, "chunks_v1") == status["embedded"]


def test_in_process_ingest_sends_a_range_at_a_time_and_bounds_the_work_in_flight(settings, tmp_path, monkeypatch):
    # A corpus of millions is read from the pending index a batch at a time and given to the engine
    # as it keeps up: neither its ids nor its tasks are ever all in memory.
    monkeypatch.setattr(progress, "PENDING_BATCH", 7)
    monkeypatch.setattr(dispatch, "IN_FLIGHT_CHUNKS", 5)
    sent, in_flight = [], []
    send = dispatch.InProcessDispatcher.send

    def recording_send(self, conn, version_id, chunk_ids):
        sent.append(len(chunk_ids))
        count = send(self, conn, version_id, chunk_ids)
        in_flight.append(self._in_flight)
        return count

    monkeypatch.setattr(dispatch.InProcessDispatcher, "send", recording_send)
    report = commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    assert len(sent) > 2 and max(sent) == 7 and sum(sent) == report.chunks_enqueued
    assert max(in_flight) <= 5
    status = status_command.status(settings)
    assert (status["embedded"], status["pending"]) == (report.chunks_enqueued, 0)


def test_changed_file_replaces_its_chunks_in_postgres_and_milvus(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    before = chunk_ids(settings, "handbook/leave.md")
    path = docs / "handbook/leave.md"
    path.write_text(path.read_text().replace("Annual leave", "Annual leave, revised") + "\nA new closing line.\n")

    report = commands.ingest(settings, docs, None, wait=False)
    after = chunk_ids(settings, "handbook/leave.md")
    assert report.documents_changed == 1 and report.documents_unchanged == 4
    assert report.chunks_removed == len(before - after) > 0
    assert report.chunks_enqueued == len(after - before)
    assert milvus_ids(settings, before - after) == set()
    assert milvus_ids(settings, after) == after
    status = status_command.status(settings)
    assert milvus.count(milvus.connect(settings), "chunks_v1") == status["embedded"] == status["chunks"]


def test_level_change_moves_vectors_to_the_new_level(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    path = docs / "finance/salary-bands.md"
    path.write_text(path.read_text().replace("manager_only", "public"))
    commands.ingest(settings, docs, None, wait=False)
    hits = commands.search(settings, "Salary bands engineers earn", AccessLevel.public, 3).hits
    assert hits[0].source_path == "finance/salary-bands.md"
    assert hits[0].access_level == "public"


@pytest.mark.parametrize("level", list(AccessLevel))
def test_search_never_returns_chunks_above_the_reader_level(settings, tmp_path, level):
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    queries = [text.split(".")[0] for _, _, text in CORPUS] + ["salary", "acquire", "nghỉ phép", "leave"]
    seen_levels = set()
    for query in queries:
        for hit in commands.search(settings, query, level, 20).hits:
            assert AccessLevel[hit.access_level] <= level, (query, hit.source_path)
            seen_levels.add(AccessLevel[hit.access_level])
    assert seen_levels == {lvl for lvl in AccessLevel if lvl <= level}


def test_query_quoting_a_document_finds_it_first(settings, tmp_path):
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    hits = commands.search(settings, "The board plans to acquire Blue River Freight", AccessLevel.director_only, 5).hits
    assert hits[0].source_path == "board/acquisition.md"
    assert all(
        h.source_path != "board/acquisition.md"
        for h in commands.search(
            settings, "The board plans to acquire Blue River Freight", AccessLevel.manager_only, 5
        ).hits
    )


def test_refused_documents_are_reported_and_never_stored(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    (docs / "no-level.md").write_text("Secret numbers with no level.")
    (docs / "bad-level.md").write_text("---\naccess_level: everyone\n---\nText")
    report = commands.ingest(settings, docs, None, wait=False)
    assert report.documents_rejected == 2
    assert {r.path for r in report.rejected} == {"no-level.md", "bad-level.md"}
    assert chunk_ids(settings, "no-level.md") == set()


def test_default_level_applies_to_files_without_one(settings, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "memo.txt").write_text("The parking garage closes at nine.")
    report = commands.ingest(settings, docs, AccessLevel.employee_only, wait=False)
    assert report.documents_new == 1
    assert commands.search(settings, "parking garage", AccessLevel.public, 5).hits == []
    assert commands.search(settings, "parking garage", AccessLevel.employee_only, 5).hits[0].source_path == "memo.txt"


def test_another_configured_model_warns_and_chunks_for_the_live_one(settings, make_settings, migrated_url, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    (docs / "new.md").write_text("---\naccess_level: public\n---\nA new memo about parking.")
    other = make_settings(database_url=migrated_url, model="fake:32", chunk_min_tokens=60, chunk_max_tokens=120)
    report = commands.ingest(other, docs, None, wait=False)
    assert "live index uses model 'fake:64'" in report.warnings[0]
    assert report.documents_new == 1
    assert status_command.status(other)["index"]["dim"] == 64
    assert commands.search(other, "memo about parking", AccessLevel.public, 1).hits[0].source_path == "new.md"


def test_missing_path_and_empty_query_are_clear_errors(settings, tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        commands.ingest(settings, tmp_path / "nope", None, wait=False)
    (tmp_path / "one.md").write_text("---\naccess_level: public\n---\nOne file.")
    with pytest.raises(InvalidInput, match="give the folder that holds it"):
        commands.ingest(settings, tmp_path / "one.md", None, wait=False)
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with pytest.raises(InvalidInput, match="empty query"):
        commands.search(settings, "  ", AccessLevel.public, 5)
    # What argv makes of bytes that are not UTF-8 (surrogateescape): refused, not a tokenizer crash.
    with pytest.raises(InvalidInput, match="not valid Unicode"):
        commands.search(settings, "leave \udcff", AccessLevel.public, 5)


def test_failed_chunks_can_be_retried(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        version = catalog.live_version(conn)
        ids = sorted(chunk_ids(settings, "board/acquisition.md"))
        conn.execute("UPDATE chunk_embeddings SET embedded_at = NULL WHERE chunk_id = ANY(%s)", (ids,))
        progress.record_failure(conn, version.id, ids, "test", "simulated")
        assert progress.progress(conn, version.id).failed == len(ids)
    assert commands.retry(settings, include_pending=False) == len(ids)
    status = status_command.status(settings)
    assert (status["failed"], status["pending"], status["embedded"]) == (0, 0, status["chunks"])


def test_prune_removes_documents_no_longer_in_the_folder(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    gone = chunk_ids(settings, "board/acquisition.md")
    (docs / "board/acquisition.md").unlink()
    kept = commands.ingest(settings, docs, None, wait=False)  # without --prune nothing is removed
    assert kept.documents_removed == 0 and chunk_ids(settings, "board/acquisition.md") == gone

    report = commands.ingest(settings, docs, None, wait=False, prune=True)
    assert (report.documents_removed, report.chunks_removed) == (1, len(gone))
    assert chunk_ids(settings, "board/acquisition.md") == set()
    assert milvus_ids(settings, gone) == set()
    hits = commands.search(
        settings, "The board plans to acquire Blue River Freight", AccessLevel.director_only, 10
    ).hits
    assert "board/acquisition.md" not in {hit.source_path for hit in hits}
    status = status_command.status(settings)
    assert milvus.count(milvus.connect(settings), "chunks_v1") == status["embedded"] == status["chunks"]


def test_a_folder_inside_an_ingested_one_keeps_identities_and_prunes_only_under_itself(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    (docs / "handbook/leave.md").unlink()
    (docs / "handbook/new.md").write_text("---\naccess_level: public\n---\nThe new gym opens at six.\n")
    (docs / "board/acquisition.md").unlink()  # outside the folder pruned below: must stay indexed

    report = commands.ingest(settings, docs / "handbook", None, wait=False, prune=True)
    assert (report.documents_new, report.documents_removed) == (1, 1)
    with closing(postgres.connect(settings)) as conn:
        paths = {path for (path,) in conn.execute("SELECT source_path FROM documents")}
    assert "handbook/new.md" in paths and "new.md" not in paths  # the outer folder's identity
    assert "handbook/leave.md" not in paths
    assert "board/acquisition.md" in paths
    status = status_command.status(settings)
    assert milvus.count(milvus.connect(settings), "chunks_v1") == status["embedded"] == status["chunks"]
