"""The kept counts (schema 0011) equal count(*) after every kind of change: ingest, a changed and a
removed document, embedding, failure, retry, a chunk put back to pending, a re-index's fill and
its version dropped; and folding them, even by two connections at once while a third writes,
changes no count."""

import threading
from contextlib import closing

import pytest

from migrations import reindex
from producer import commands
from tests.integration.conftest import write_corpus
from workers.core.constants import STATE_BUILDING
from workers.core.stores import catalog, postgres, progress

TRUTH = """
SELECT 'documents', 0, count(*) FROM documents
UNION ALL SELECT 'chunks', 0, count(*) FROM chunks
UNION ALL SELECT embedding_state(embedded_at, failed_at), index_version_id, count(*) FROM chunk_embeddings GROUP BY 1, 2
"""


@pytest.fixture
def settings(make_settings, migrated_url):
    return make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=20, chunk_max_tokens=60)


def assert_counts_true(conn) -> None:
    truth = {(subject, version): count for subject, version, count in conn.execute(TRUTH) if count}
    kept = {key: count for key, count in progress.row_counts(conn).items() if count}
    assert kept == truth


def test_counts_follow_every_change(settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    commands.ingest(settings, docs, None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        assert_counts_true(conn)
        live = catalog.live_version(conn)
        assert progress.progress(conn, live.id).embedded > 0

        (docs / "handbook" / "welcome.md").write_text("---\naccess_level: public\n---\nThe cafeteria moved.\n")
        (docs / "board" / "acquisition.md").unlink()
        commands.ingest(settings, docs, None, wait=False, prune=True)
        assert_counts_true(conn)

        chunk_ids = [chunk_id for (chunk_id,) in conn.execute("SELECT id FROM chunks ORDER BY id LIMIT 3")]
        progress.unmark_embedded(conn, live.id, chunk_ids[:2])
        assert_counts_true(conn)
        progress.record_failure(conn, live.id, chunk_ids[:1], "permanent", "too long")
        assert_counts_true(conn)
        assert progress.progress(conn, live.id).failed == 1
        progress.claim(conn, live.id, chunk_ids)  # attempts only: no state changes
        progress.retry_failed(conn, live.id)
        assert_counts_true(conn)

        green = catalog.create_version(conn, "fake:32", 32, STATE_BUILDING)
        filled = reindex.fill_pending(conn, green)
        assert progress.progress(conn, green.id).pending == filled > 0
        progress.mark_embedded(conn, green.id, chunk_ids)
        assert_counts_true(conn)
        conn.execute("DELETE FROM index_versions WHERE id = %s", (green.id,))  # cascades to its rows
        assert_counts_true(conn)
        assert progress.progress(conn, green.id).total == 0

        conn.execute("DELETE FROM documents")  # cascades to chunks and their embedding rows
        assert_counts_true(conn)
        assert progress.row_counts(conn).get(("chunks", 0), 0) == 0


def test_folding_at_once_with_writers_keeps_every_count(settings):
    with closing(postgres.connect(settings)) as conn:
        conn.execute(
            "INSERT INTO documents (source_path, content_sha256, access_level)"
            " SELECT 'f/' || i, 'x', 0 FROM generate_series(1, 300) AS i"
        )
    errors: list[BaseException] = []

    def insert_one_by_one() -> None:
        try:
            with closing(postgres.connect(settings)) as writer:
                for i in range(300):
                    writer.execute(
                        "INSERT INTO documents (source_path, content_sha256, access_level) VALUES (%s, 'x', 0)",
                        (f"w/{i}",),
                    )
        except BaseException as err:
            errors.append(err)

    def fold_repeatedly() -> None:
        try:
            with closing(postgres.connect(settings)) as folder:
                for _ in range(100):
                    folder.execute("SELECT fold_row_counts()")  # not the helper: no lock, so folds overlap
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=target) for target in (insert_one_by_one, fold_repeatedly, fold_repeatedly)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with closing(postgres.connect(settings)) as conn:
        assert_counts_true(conn)
        assert progress.row_counts(conn)[("documents", 0)] == 600
        progress.fold_counts(conn)
        (rows,) = conn.execute("SELECT count(*) FROM row_counts WHERE subject = 'documents'").fetchone()
        assert rows == 1  # folded into one sum
