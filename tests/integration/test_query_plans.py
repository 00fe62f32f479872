"""The corpus-wide queries stay flat: none reads the chunks or their embedding rows whole, once
there are rows enough for the planner to choose an index (ops/bench/scale.py measures them at a
million chunks). Each operation runs for real on a recording connection; each statement it ran
is EXPLAINed on a corpus in its steady state: almost everything embedded long ago, a few chunks
pending and failed.
"""

from contextlib import closing

import pytest

from tests.query_plans import corpus_queries, plan, rows_read, sequential
from workers.core.constants import STATE_BUILDING, STATE_LIVE
from workers.core.stores import catalog, postgres, progress

DOCUMENTS, CHUNKS_PER_DOCUMENT = 5_000, 8
# Operations that read a whole table by design, and why: everything else must not.
WHOLE_READS = {
    # Every document's fingerprint, once per ingest, to skip unchanged files (one row per document).
    ("ingest: fingerprints", "documents"),
    # The token count and bytes of every chunk: the plan's very question (streamed, 2,000 at a time).
    ("reindex plan", "chunks"),
}


@pytest.fixture
def corpus_settings(make_settings, migrated_url):
    settings = make_settings(database_url=migrated_url, model="fake:64")
    with closing(postgres.connect(settings)) as conn:
        version = catalog.create_version(conn, "fake:64", 64, STATE_LIVE)
        conn.execute(
            "INSERT INTO documents (source_path, content_sha256, access_level, fingerprint)"
            " SELECT 'team/' || i || '.md', md5(i::text), i %% 4, md5(i::text) FROM generate_series(1, %s) AS i",
            (DOCUMENTS,),
        )
        conn.execute(
            "INSERT INTO chunks (id, document_id, ordinal, text, token_count)"
            " SELECT md5('chunk' || i), d.id, i %% %s, 'text of chunk ' || i, 5"
            " FROM generate_series(0, %s - 1) AS i"
            " JOIN documents d ON d.source_path = 'team/' || (i / %s + 1) || '.md'",
            (CHUNKS_PER_DOCUMENT, DOCUMENTS * CHUNKS_PER_DOCUMENT, CHUNKS_PER_DOCUMENT),
        )
        # Embedded a day ago, but for 1 in 200 pending and 1 in 500 failed.
        conn.execute(
            "INSERT INTO chunk_embeddings (index_version_id, chunk_id, embedded_at, failed_at, queued_at, sent_at)"
            " SELECT %s, id, CASE WHEN ordinal_hash %% 200 = 0 OR ordinal_hash %% 500 = 1 THEN NULL"
            "                     ELSE now() - interval '1 day' END,"
            "        CASE WHEN ordinal_hash %% 500 = 1 THEN now() - interval '1 hour' END,"
            "        now() - interval '1 day', now() - interval '1 hour'"
            " FROM (SELECT id, abs(hashtext(id)) AS ordinal_hash FROM chunks) AS c",
            (version.id,),
        )
        conn.execute("VACUUM ANALYZE")
    return settings


def test_no_corpus_wide_query_reads_the_chunks_whole(corpus_settings):
    with closing(postgres.connect(corpus_settings)) as conn:
        caught = corpus_queries(conn, corpus_settings, names=_without_milvus())
        assert set(caught) == _without_milvus()
        whole = {}
        for name, statements in caught.items():
            assert statements, f"{name} ran no statement"
            for query, params in statements:
                tables = sequential(plan(conn, query, params))
                unexpected = [table for table in tables if (name, table) not in WHOLE_READS]
                if unexpected:
                    whole[name] = (unexpected, query)
    assert whole == {}, f"these read a corpus table whole: {whole}"


def test_the_steady_state_counts_come_from_the_kept_counts(corpus_settings):
    """`status`'s counts, without reading the rows: the kept counts equal count(*)."""
    with closing(postgres.connect(corpus_settings)) as conn:
        live = catalog.live_version(conn)
        counts = progress.progress(conn, live.id)
        truth = conn.execute(
            "SELECT count(*) FILTER (WHERE embedded_at IS NOT NULL),"
            " count(*) FILTER (WHERE embedded_at IS NULL AND failed_at IS NULL),"
            " count(*) FILTER (WHERE embedded_at IS NULL AND failed_at IS NOT NULL) FROM chunk_embeddings"
        ).fetchone()
    assert (counts.embedded, counts.pending, counts.failed) == truth
    assert counts.total == DOCUMENTS * CHUNKS_PER_DOCUMENT and 0 < counts.pending < counts.total // 100


def test_a_reconciler_round_reads_the_lost_work_not_the_whole_backlog(corpus_settings):
    """A re-index in progress: every chunk pending for green, all sent a moment ago (not lost).
    The round reads about the chunks that are lost (those of the live version, sent an hour ago),
    not the 40,000 pending."""
    with closing(postgres.connect(corpus_settings)) as conn:
        green = catalog.create_version(conn, "fake:32", 32, STATE_BUILDING)
        conn.execute(
            "INSERT INTO chunk_embeddings (index_version_id, chunk_id, sent_at) SELECT %s, id, now() FROM chunks",
            (green.id,),
        )
        conn.execute("ANALYZE chunk_embeddings")
        lost = progress.progress(conn, catalog.live_version(conn).id).pending
        statements = corpus_queries(conn, corpus_settings, names={"reconciler: lost chunks"})["reconciler: lost chunks"]
        query, params = next((q, p) for q, p in statements if "chunk_embeddings" in q)
        read = rows_read(plan(conn, query, params, analyze=True)["Plan"], "chunk_embeddings")
    assert 0 < lost <= read <= 2 * lost, f"read {read} rows for {lost} lost chunks"


def _without_milvus() -> set[str]:
    """The operations whose statements are all Postgres (verify's Milvus scan needs a collection;
    its Postgres side reads one version's ids by design, the comparison's very input)."""
    return {
        "status",
        "reconciler: lost chunks",
        "outbox",
        "ingest: fingerprints",
        "pending chunk ids",
        "reindex plan",
        "migrate status",
    }
