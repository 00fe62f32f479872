"""A property over random documents, levels, level changes and queries: Milvus itself never
returns a vector above the reader's level, and every vector it returns carries its document's
current level, in every search mode (dense, keyword, hybrid, with identifiers matched whole).
Checked on Milvus's own answer, not through `producer search` (which re-checks Postgres and would
hide a missing filter): take the level filter out of any request of `milvus.search_many` and this
test fails."""

from contextlib import closing
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer import commands
from producer.search import encoder_for, make_query
from workers.core.access import AccessLevel
from workers.core.constants import SEARCH_MODES
from workers.core.stores import catalog, milvus, postgres

VOCABULARY = [
    "leave",
    "salary",
    "board",
    "merger",
    "payroll",
    "bonus",
    "warehouse",
    "vpn",
    "backup",
    "budget",
    "audit",
    "contract",
    # Identifiers, matched whole by the keyword and hybrid modes.
    "45/2019/NĐ-CP",
    "54/2019/NĐ-CP",
    "HD-2024-0157",
]
text = st.lists(st.sampled_from(VOCABULARY), min_size=4, max_size=40).map(" ".join)
level = st.sampled_from(list(AccessLevel))
runs = count()


@pytest.fixture
def index(make_settings, migrated_url, tmp_path):
    return make_settings(database_url=migrated_url, model="fake:32", chunk_min_tokens=5, chunk_max_tokens=20), tmp_path


def write(folder, documents: list[tuple[str, AccessLevel]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, (body, access) in enumerate(documents):
        (folder / f"doc-{number}.md").write_text(f"---\naccess_level: {access.name}\n---\n{body}\n")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    documents=st.lists(st.tuples(text, level), min_size=1, max_size=6),
    changes=st.lists(st.tuples(st.integers(0, 5), level), max_size=4),
    queries=st.lists(text, min_size=1, max_size=3),
)
def test_milvus_never_returns_a_vector_above_the_reader_level(index, documents, changes, queries):
    fleet_settings, tmp_path = index
    folder = tmp_path / f"run-{next(runs)}"
    write(folder, documents)
    commands.ingest(fleet_settings, folder, None, wait=False)
    for position, new_level in changes:  # move some documents to another level, then ingest again
        if position < len(documents):
            documents[position] = (documents[position][0], new_level)
    write(folder, documents)
    commands.ingest(fleet_settings, folder, None, wait=False)

    with closing(postgres.connect(fleet_settings)) as conn:
        version = catalog.live_version(conn)
        current = dict(
            conn.execute("SELECT c.id, d.access_level FROM chunks c JOIN documents d ON d.id = c.document_id")
        )
    client = milvus.connect(fleet_settings)
    milvus.ensure_loaded(client, version.collection)
    encoder = encoder_for(version.model, "cpu")
    searches = [make_query(query, encoder.encode_queries([query])[0]) for query in queries]
    assert version.modes == SEARCH_MODES
    for mode in SEARCH_MODES:
        for reader in AccessLevel:
            for hits in milvus.search_many(client, version.collection, searches, reader, 50, mode):
                for hit in hits:
                    assert hit.access_level <= reader, f"{mode}: {reader.name} got a level-{hit.access_level} vector"
                    assert hit.chunk_id in current, f"{mode}: a vector of a chunk that no longer exists"
                    assert hit.access_level == current[hit.chunk_id], f"{mode}: a vector at its document's old level"
