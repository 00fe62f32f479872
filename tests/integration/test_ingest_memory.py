"""An ingest's memory does not follow the corpus: a corpus ten times larger costs nowhere near ten
times the memory (documents are read, registered and sent in bounded batches; nothing holds every
chunk). Measured with tracemalloc in this process, the producer's own allocations, after a first
ingest has imported everything; the chunks go to a broker with no worker (nothing is embedded:
what is measured is the producer). ops/bench/scale.py measures its peak RSS at a million chunks.
"""

import tracemalloc
from contextlib import closing

import pytest

from producer import commands
from tests.corpus import write_corpus
from workers.core.stores import postgres

SMALL, LARGE = 2_000, 20_000
MAX_BYTES_PER_CHUNK = 400


@pytest.fixture
def ingest_peak(make_settings, pg_admin, redis_url, tmp_path):
    """The peak of Python allocations while a corpus of about `chunks` chunks is ingested."""
    databases = []

    def measure(chunks: int) -> tuple[int, int]:
        name = f"fleet_test_memory_{len(databases)}_{tmp_path.name[-12:]}".replace("-", "_").lower()
        pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        pg_admin.execute(f'CREATE DATABASE "{name}"')
        databases.append(name)
        settings = make_settings(
            database_url=f"postgresql://postgres@127.0.0.1:5432/{name}",
            broker_url=redis_url,
            model="null:64",
            chunk_min_tokens=60,
            chunk_max_tokens=120,
        )
        with closing(postgres.connect(settings, migrate=True)):
            pass
        docs = tmp_path / f"docs-{chunks}"
        write_corpus(docs, chunks)
        tracemalloc.start()
        try:
            report = commands.ingest(settings, docs, None, wait=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert report.rejected == [] and report.chunks_unsent == 0
        return peak, report.chunks_enqueued

    yield measure
    for name in databases:
        pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_corpus_ten_times_larger_does_not_take_ten_times_the_memory(ingest_peak):
    ingest_peak(200)  # imports, the parse pool's first start, caches: not the corpus's
    small, small_chunks = ingest_peak(SMALL)
    large, large_chunks = ingest_peak(LARGE)
    assert large_chunks >= 9 * small_chunks
    shown = f"peak {small / 2**20:.1f} MB at {small_chunks} chunks, {large / 2**20:.1f} MB at {large_chunks}"
    assert large < 10 * small, shown
    # What grows with the corpus is a path per document (what this run saw, the walk's identities):
    # ~180 bytes a chunk here. A chunk's text alone is ~600 bytes: holding them would pass this.
    assert (large - small) / (large_chunks - small_chunks) < MAX_BYTES_PER_CHUNK, shown
