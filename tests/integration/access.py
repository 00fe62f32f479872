"""What Milvus itself would show a reader: the access tests check the index, not `producer search`
(which re-checks Postgres and would hide a vector stored at the wrong level)."""

from contextlib import closing

from workers.core.access import AccessLevel
from workers.core.stores import catalog, milvus, postgres


def stored_levels(settings) -> dict[str, set[int]]:
    """Every document with vectors in the live collection: its path and the levels its vectors carry.
    A vector whose document Postgres no longer knows is listed under "?orphan"."""
    with closing(postgres.connect(settings)) as conn:
        version = catalog.live_version(conn)
        paths = dict(conn.execute("SELECT id, source_path FROM documents"))
    if version is None:
        return {}
    client = milvus.connect(settings)
    milvus.ensure_loaded(client, version.collection)
    rows = client.query(version.collection, filter="", output_fields=["document_id", "access_level"], limit=16384)
    levels: dict[str, set[int]] = {}
    for row in rows:
        levels.setdefault(paths.get(row["document_id"], "?orphan"), set()).add(int(row["access_level"]))
    return levels


def visible_at(settings, reader: AccessLevel) -> set[str]:
    """The documents of which Milvus holds a vector that `reader` may see."""
    return {path for path, levels in stored_levels(settings).items() if min(levels) <= reader}
