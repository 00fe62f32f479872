"""Milvus against Postgres, the truth: vectors of chunks that are gone, done chunks without a vector.

After any crash `count(Milvus) == count(chunks done in Postgres)` should hold for every kept
version (the outbox sees to deletions); a lost Milvus segment, or a store restored from an older
backup, can still break it. `migrate verify` finds both sides, `--repair` deletes the orphans and
puts the missing chunks back to pending for the workers.

Safe while workers write: a worker upserts a vector before it marks its chunk done, so the done
set is read *before* Milvus is scanned (every chunk done then has its vector by then), and what
is registered *after* it (a vector written during the scan belongs to a registered chunk). An
orphan is a vector whose chunk this version no longer has: deleting it can never remove work.

Flat in memory: both sides are streamed in id order and merged, and only the ids that differ are
held (a million ids as Python strings would be ~150 MB a set).
"""

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import psycopg
from pymilvus import MilvusClient

from workers.core.errors import PermanentError
from workers.core.stores import catalog, milvus, outbox
from workers.core.stores.catalog import IndexVersion

SCAN_ROWS = 5000
# Ids per statement when the differences are checked or repaired.
CHECK_ROWS = 10_000


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
    done, stored, orphans, missing = _compare(conn, client, version)
    result = VersionCheck(version.collection, version.state, done, stored, len(orphans), len(missing))
    if repair and not result.consistent:
        milvus.delete(client, version.collection, orphans)
        for start in range(0, len(missing), CHECK_ROWS):
            conn.execute(
                "UPDATE chunk_embeddings SET embedded_at = NULL, attempts = 0"
                " WHERE index_version_id = %s AND chunk_id = ANY(%s)",
                (version.id, missing[start : start + CHECK_ROWS]),
            )
        result.repaired = True
    return result


def _compare(conn: psycopg.Connection, client: MilvusClient, version: IndexVersion) -> tuple[int, int, list, list]:
    """(chunks done in Postgres, vectors in Milvus, orphans, missing), holding only the differences.

    Both sides are read in id order (bytes, as Milvus orders its keys) and merged: Postgres's done
    chunks from a cursor opened before Milvus is scanned; what differs is then checked against
    what is registered after the scan. A vector whose chunk was removed *during* the scan is not
    counted here: its removal's outbox row deletes it."""
    with conn.transaction(), conn.cursor(name=f"verify_{version.id}") as done_cursor:
        done_cursor.itersize = SCAN_ROWS
        done_cursor.execute(
            "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s AND embedded_at IS NOT NULL"
            ' ORDER BY chunk_id COLLATE "C"',
            (version.id,),
        )
        done_ids = _ordered(chunk_id for (chunk_id,) in done_cursor)
        stored_ids = _ordered(_milvus_ids(client, version.collection))
        counts, only_done, only_stored = _merge(done_ids, stored_ids)
    registered_stored = _registered(conn, version, only_stored)
    orphans = [chunk_id for chunk_id in only_stored if chunk_id not in registered_stored]
    # A chunk removed meanwhile is not missing.
    missing = sorted(_registered(conn, version, only_done))
    return counts[0], counts[1], orphans, missing


def _merge(done: Iterator[str], stored: Iterator[str]) -> tuple[list[int], list[str], list[str]]:
    """Counts of both sorted streams, and the ids only in one of them."""
    counts, only_done, only_stored = [0, 0], [], []
    left, right = next(done, None), next(stored, None)
    while left is not None or right is not None:
        if right is None or (left is not None and left < right):
            only_done.append(left)
            counts[0] += 1
            left = next(done, None)
        elif left is None or right < left:
            only_stored.append(right)
            counts[1] += 1
            right = next(stored, None)
        else:
            counts[0] += 1
            counts[1] += 1
            left, right = next(done, None), next(stored, None)
    return counts, only_done, only_stored


def _ordered(ids: Iterable[str]) -> Iterator[str]:
    """`ids`, checked to come in order: a merge of unsorted streams would report what is there as missing."""
    previous = None
    for chunk_id in ids:
        if previous is not None and chunk_id <= previous:
            raise OutOfOrder(
                f"ids came out of order ({chunk_id!r} after {previous!r}): this Milvus does not page its "
                "query iterator by key, and verify cannot compare without it; nothing was changed"
            )
        previous = chunk_id
        yield chunk_id


class OutOfOrder(PermanentError):
    """Milvus (or Postgres) did not return ids in order: the comparison cannot be trusted."""


def _registered(conn: psycopg.Connection, version: IndexVersion, chunk_ids: list[str]) -> set[str]:
    """Those of `chunk_ids` the version has now."""
    found: set[str] = set()
    for start in range(0, len(chunk_ids), CHECK_ROWS):
        rows = conn.execute(
            "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s AND chunk_id = ANY(%s)",
            (version.id, chunk_ids[start : start + CHECK_ROWS]),
        )
        found.update(chunk_id for (chunk_id,) in rows)
    return found


def _milvus_ids(client: MilvusClient, collection: str) -> Iterator[str]:
    """Every key in the collection, in key order (Milvus's query iterator pages by key)."""
    milvus.ensure_loaded(client, collection)
    iterator = client.query_iterator(collection, batch_size=SCAN_ROWS, output_fields=["chunk_id"])
    try:
        while batch := iterator.next():
            yield from (row["chunk_id"] for row in batch)
    finally:
        iterator.close()
