"""The outbox of vector deletions: what Milvus must follow once Postgres has changed.

A change that removes chunks (a changed, moved, pruned or withdrawn document; a chunk deleted
while it was embedded) adds their ids here in the same transaction, so the intent survives any
crash or outage. `apply` deletes them from every kept collection and forgets a row only once
Milvus has confirmed; the producer applies its own rows at once, the reconciler whatever is left.
"""

import logging

import psycopg
from pymilvus import MilvusClient

from workers.core.stores import catalog, milvus

log = logging.getLogger(__name__)

ROWS_PER_APPLY = 200


def add(conn: psycopg.Connection, chunk_ids: list[str], reason: str) -> None:
    """Record that these chunks' vectors must go (call it inside the transaction that removed them)."""
    if chunk_ids:
        conn.execute("INSERT INTO milvus_outbox (chunk_ids, reason) VALUES (%s, %s)", (chunk_ids, reason))


def pending(conn: psycopg.Connection) -> int:
    (rows,) = conn.execute("SELECT count(*) FROM milvus_outbox").fetchone()
    return rows


def apply(conn: psycopg.Connection, client: MilvusClient, limit: int = ROWS_PER_APPLY) -> int:
    """Delete the recorded vectors from every kept collection, oldest first; returns how many ids
    were carried out. Raises what Milvus raises (the rows stay, with the error, for the next try)."""
    rows = conn.execute("SELECT id, chunk_ids FROM milvus_outbox ORDER BY id LIMIT %s", (limit,)).fetchall()
    if not rows:
        return 0
    collections = [v.collection for v in catalog.all_versions(conn) if client.has_collection(v.collection)]
    done = 0
    for row_id, chunk_ids in rows:
        # A chunk that exists again (a document changed back meanwhile) keeps its vector.
        gone = [
            chunk_id
            for (chunk_id,) in conn.execute(
                "SELECT unnest(%s::text[]) EXCEPT SELECT id FROM chunks WHERE id = ANY(%s)", (chunk_ids, chunk_ids)
            )
        ]
        try:
            for collection in collections:
                milvus.delete(client, collection, gone)
        except Exception as err:
            conn.execute(
                "UPDATE milvus_outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                (str(err)[:500], row_id),
            )
            raise
        conn.execute("DELETE FROM milvus_outbox WHERE id = %s", (row_id,))
        done += len(gone)
    return done


def apply_if_possible(conn: psycopg.Connection, client: MilvusClient) -> bool:
    """`apply`, saying instead of raising when Milvus is out: the rows wait for the next try."""
    try:
        apply(conn, client)
    except Exception as err:
        log.warning("Milvus did not take the pending vector deletions (%s): they are retried later", err)
        return False
    return True
