"""Milvus against Postgres, the truth: vectors of chunks that are gone, done chunks without a vector.

After any crash `count(Milvus) == count(chunks done in Postgres)` should hold for every kept
version (the outbox sees to deletions); a lost Milvus segment, or a store restored from an older
backup, can still break it. `migrate verify` finds both sides, `--repair` deletes the orphans and
puts the missing chunks back to pending for the workers.

Safe while workers write: a worker upserts a vector before it marks its chunk done, so the done
set is read *before* Milvus is scanned (every chunk done then has its vector by then), and what
is registered *after* it (a vector written during the scan belongs to a registered chunk). An
orphan is a vector whose chunk this version no longer has: deleting it can never remove work.
"""

from dataclasses import asdict, dataclass

import psycopg
from pymilvus import MilvusClient

from workers.core.stores import catalog, milvus, outbox
from workers.core.stores.catalog import IndexVersion

SCAN_ROWS = 5000


@dataclass
class VersionCheck:
    name: str
    state: str
    done_in_postgres: int
    in_milvus: int
    orphans: int
    missing: int
    repaired: bool = False

    @property
    def consistent(self) -> bool:
        return self.orphans == 0 and self.missing == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "consistent": self.consistent}


def check_all(conn: psycopg.Connection, client: MilvusClient, repair: bool) -> list[VersionCheck]:
    """Check (and with `repair`, fix) every version whose collection exists, after carrying out the
    deletions still in the outbox."""
    outbox.apply(conn, client)
    return [
        check_version(conn, client, version, repair)
        for version in catalog.all_versions(conn)
        if client.has_collection(version.collection)
    ]


def check_version(conn: psycopg.Connection, client: MilvusClient, version: IndexVersion, repair: bool) -> VersionCheck:
    done = _chunk_ids(conn, version, "AND embedded_at IS NOT NULL")
    stored = _milvus_ids(client, version.collection)
    registered = _chunk_ids(conn, version, "")
    orphans = sorted(stored - registered)
    missing = sorted((done - stored) & registered)  # a chunk removed meanwhile is not missing
    result = VersionCheck(version.collection, version.state, len(done), len(stored), len(orphans), len(missing))
    if repair and not result.consistent:
        milvus.delete(client, version.collection, orphans)
        conn.execute(
            "UPDATE chunk_embeddings SET embedded_at = NULL, attempts = 0"
            " WHERE index_version_id = %s AND chunk_id = ANY(%s)",
            (version.id, missing),
        )
        result.repaired = True
    return result


def _chunk_ids(conn: psycopg.Connection, version: IndexVersion, condition: str) -> set[str]:
    query = "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s " + condition
    return {chunk_id for (chunk_id,) in conn.execute(query, (version.id,))}


def _milvus_ids(client: MilvusClient, collection: str) -> set[str]:
    milvus.ensure_loaded(client, collection)
    iterator = client.query_iterator(collection, batch_size=SCAN_ROWS, output_fields=["chunk_id"])
    ids: set[str] = set()
    try:
        while batch := iterator.next():
            ids.update(row["chunk_id"] for row in batch)
    finally:
        iterator.close()
    return ids
