"""Milvus against Postgres, the truth: vectors without a done chunk, done chunks without a vector.

After any crash `count(Milvus) == count(chunks done in Postgres)` should hold for every kept
version; a crash between a Postgres commit and the Milvus delete that follows it can leave an
orphan vector, and a lost Milvus segment a missing one. `migrate verify` finds both, `--repair`
deletes the orphans and puts the missing chunks back to pending for the workers.
"""

from dataclasses import asdict, dataclass

import psycopg
from pymilvus import MilvusClient

from workers.stores import catalog, milvus
from workers.stores.catalog import IndexVersion

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
    """Check (and with `repair`, fix) every version whose collection exists."""
    return [
        check_version(conn, client, version, repair)
        for version in catalog.all_versions(conn)
        if client.has_collection(version.collection)
    ]


def check_version(conn: psycopg.Connection, client: MilvusClient, version: IndexVersion, repair: bool) -> VersionCheck:
    done = {
        chunk_id
        for (chunk_id,) in conn.execute(
            "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s AND embedded_at IS NOT NULL",
            (version.id,),
        )
    }
    stored = _milvus_ids(client, version.collection)
    orphans, missing = sorted(stored - done), sorted(done - stored)
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
