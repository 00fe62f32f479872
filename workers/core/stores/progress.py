"""Embedding progress in Postgres: claim pending chunks, mark them embedded, record failures."""

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

from workers.core.identifiers import DOCUMENT_HEAD_CHARS

# Changes of the counts past which a read folds them first (a read sums them all).
FOLD_AFTER = 1000
# Pending chunk ids read at once when all are sent (one range of the pending index).
PENDING_BATCH = 10_000
_FOLD_LOCK = 7_340_214

# The start of a chunk's document (`c`): where an official document states its own number.
_DOCUMENT_HEAD = (
    f"(SELECT left(f.text, {DOCUMENT_HEAD_CHARS}) FROM chunks f"
    " WHERE f.document_id = c.document_id ORDER BY f.ordinal LIMIT 1)"
)


@dataclass(frozen=True)
class PendingChunk:
    id: str
    document_id: int
    access_level: int
    text: str
    token_count: int
    attempts: int
    source_path: str = ""
    head: str = ""  # the start of its document's text (identifiers.for_chunk)


@dataclass(frozen=True)
class ChunkText:
    id: str
    text: str
    source_path: str
    head: str


@dataclass(frozen=True)
class Progress:
    embedded: int
    pending: int
    failed: int

    @property
    def total(self) -> int:
        return self.embedded + self.pending + self.failed


def claim(conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> list[PendingChunk]:
    """The chunks among `chunk_ids` still to embed for the version, each with one more attempt counted.

    Chunks already embedded (a redelivered task), failed, or deleted since are left out.
    """
    with conn.cursor(row_factory=class_row(PendingChunk)) as cur:
        return cur.execute(
            f"""
            UPDATE chunk_embeddings AS ce SET attempts = ce.attempts + 1
            FROM chunks AS c JOIN documents AS d ON d.id = c.document_id
            WHERE ce.index_version_id = %s AND ce.chunk_id = ANY(%s) AND c.id = ce.chunk_id
              AND ce.embedded_at IS NULL AND ce.failed_at IS NULL
            RETURNING c.id, c.document_id, d.access_level, c.text, c.token_count, ce.attempts,
                      d.source_path, {_DOCUMENT_HEAD} AS head
            """,
            (version_id, chunk_ids),
        ).fetchall()


def chunk_texts(conn: psycopg.Connection, chunk_ids: list[str]) -> dict[str, ChunkText]:
    """What a keyword index needs of each chunk that still exists: its text, document and head."""
    with conn.cursor(row_factory=class_row(ChunkText)) as cur:
        rows = cur.execute(
            f"SELECT c.id, c.text, d.source_path, {_DOCUMENT_HEAD} AS head"
            " FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
            (chunk_ids,),
        ).fetchall()
    return {row.id: row for row in rows}


def mark_embedded(conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> set[str]:
    """Mark chunks embedded; returns those that still exist (a changed document may have dropped some)."""
    rows = conn.execute(
        "UPDATE chunk_embeddings SET embedded_at = now() WHERE index_version_id = %s AND chunk_id = ANY(%s)"
        " RETURNING chunk_id",
        (version_id, chunk_ids),
    ).fetchall()
    return {chunk_id for (chunk_id,) in rows}


def unmark_embedded(conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> list[str]:
    """Put embedded chunks back to pending (their vectors may be gone); returns those it did."""
    rows = conn.execute(
        "UPDATE chunk_embeddings SET embedded_at = NULL"
        " WHERE index_version_id = %s AND chunk_id = ANY(%s) AND embedded_at IS NOT NULL RETURNING chunk_id",
        (version_id, chunk_ids),
    ).fetchall()
    return [chunk_id for (chunk_id,) in rows]


def refund_attempts(conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> None:
    """Give back the attempt their claim counted: an outage, not these chunks, stopped them."""
    conn.execute(
        "UPDATE chunk_embeddings SET attempts = greatest(attempts - 1, 0)"
        " WHERE index_version_id = %s AND chunk_id = ANY(%s) AND embedded_at IS NULL AND failed_at IS NULL",
        (version_id, chunk_ids),
    )


def mark_sent(conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> float:
    """Record that these chunks are being sent now; returns the time (Postgres's clock, epoch seconds)
    that their task messages carry, which lets the reconciler tell a lost task from a queued one."""
    (sent_at,) = conn.execute(
        "WITH sent AS (UPDATE chunk_embeddings SET sent_at = now()"
        " WHERE index_version_id = %s AND chunk_id = ANY(%s)) SELECT extract(epoch FROM now())",
        (version_id, chunk_ids),
    ).fetchone()
    return float(sent_at)


def record_failure(conn: psycopg.Connection, version_id: int, chunk_ids: list[str], kind: str, error: str) -> None:
    """Write why these chunks failed and take them out of the pending work (`producer retry` puts them back)."""
    with conn.transaction():
        conn.execute(
            "UPDATE chunk_embeddings SET failed_at = now() WHERE index_version_id = %s AND chunk_id = ANY(%s)",
            (version_id, chunk_ids),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO failures (index_version_id, chunk_id, kind, error)"
                " SELECT %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM chunks WHERE id = %s)",
                [(version_id, chunk_id, kind, error[:2000], chunk_id) for chunk_id in chunk_ids],
            )


def failed_documents(conn: psycopg.Connection, version_id: int, limit: int = 5) -> list[tuple[str, str, str]]:
    """(document path, chunk id, why) of some chunks that failed for `version_id`, oldest first."""
    return conn.execute(
        """
        SELECT d.source_path, ce.chunk_id, coalesce(f.error, 'failed')
        FROM chunk_embeddings ce
        JOIN chunks c ON c.id = ce.chunk_id JOIN documents d ON d.id = c.document_id
        LEFT JOIN LATERAL (SELECT error FROM failures WHERE index_version_id = ce.index_version_id
                           AND chunk_id = ce.chunk_id ORDER BY id DESC LIMIT 1) f ON true
        WHERE ce.index_version_id = %s AND ce.failed_at IS NOT NULL AND ce.embedded_at IS NULL
        ORDER BY ce.failed_at LIMIT %s
        """,
        (version_id, limit),
    ).fetchall()


def progress(conn: psycopg.Connection, version_id: int) -> Progress:
    """Embedded, pending and failed chunks of a version: from the kept counts (schema 0011), not a
    count over its rows."""
    return progress_in(row_counts(conn), version_id)


def progress_in(counts: dict[tuple[str, int], int], version_id: int) -> Progress:
    """A version's progress among kept counts already read (`row_counts`)."""
    return Progress(*(counts.get((state, version_id), 0) for state in ("embedded", "pending", "failed")))


def row_counts(conn: psycopg.Connection) -> dict[tuple[str, int], int]:
    """The kept counts: ("documents", 0), ("chunks", 0), and (state, version id) for each state
    of embedding. The changes recorded since the last call are folded first when there are many."""
    (changes,) = conn.execute("SELECT count(*) FROM (SELECT 1 FROM row_counts LIMIT %s) AS c", (FOLD_AFTER,)).fetchone()
    if changes >= FOLD_AFTER:
        fold_counts(conn)
    rows = conn.execute("SELECT subject, index_version_id, sum(delta) FROM row_counts GROUP BY 1, 2").fetchall()
    return {(subject, version_id): int(count) for subject, version_id, count in rows}


def fold_counts(conn: psycopg.Connection) -> None:
    """Replace the recorded changes of the counts by their sums (one caller at a time)."""
    with conn.transaction():
        (mine,) = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_FOLD_LOCK,)).fetchone()
        if mine:
            conn.execute("SELECT fold_row_counts()")


def pending_batches(conn: psycopg.Connection, version_id: int, size: int | None = None) -> Iterator[list[str]]:
    """The chunks pending for the version, `size` ids at a time in id order: each batch one range
    of the pending index, so that a backlog of millions is never read, nor held, at once. Chunks
    that stop pending meanwhile (embedded while the rest is sent) are simply not met again."""
    size, after = size or PENDING_BATCH, ""
    while True:
        rows = conn.execute(
            "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s"
            " AND embedded_at IS NULL AND failed_at IS NULL AND chunk_id > %s ORDER BY chunk_id LIMIT %s",
            (version_id, after, size),
        ).fetchall()
        if not rows:
            return
        yield [chunk_id for (chunk_id,) in rows]
        (after,) = rows[-1]


def pending_chunk_ids(conn: psycopg.Connection, version_id: int) -> list[str]:
    """Every chunk pending for the version (a small version's; `pending_batches` streams)."""
    return [chunk_id for batch in pending_batches(conn, version_id) for chunk_id in batch]


def still_pending(conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> set[str]:
    """Those of `chunk_ids` pending for the version (a batch at a time: never every pending id)."""
    rows = conn.execute(
        "SELECT chunk_id FROM chunk_embeddings WHERE index_version_id = %s AND chunk_id = ANY(%s)"
        " AND embedded_at IS NULL AND failed_at IS NULL",
        (version_id, chunk_ids),
    )
    return {chunk_id for (chunk_id,) in rows}


def retry_failed(conn: psycopg.Connection, version_id: int) -> list[str]:
    """Put failed chunks back to pending, with their attempts reset; returns their ids."""
    with conn.transaction():
        rows = conn.execute(
            "UPDATE chunk_embeddings SET failed_at = NULL, attempts = 0"
            " WHERE index_version_id = %s AND failed_at IS NOT NULL AND embedded_at IS NULL RETURNING chunk_id",
            (version_id,),
        ).fetchall()
        conn.execute("DELETE FROM failures WHERE index_version_id = %s", (version_id,))
    return [chunk_id for (chunk_id,) in rows]


def recent_rate(conn: psycopg.Connection, window_s: float, version_id: int | None = None) -> float:
    """Chunks/s embedded over the last `window_s` seconds (over the part of it that saw work)."""
    # Per version, so that the (version, embedded_at) index finds the window's rows.
    count, span = conn.execute(
        "SELECT count(*), extract(epoch FROM now() - min(ce.embedded_at)) FROM index_versions v"
        " JOIN chunk_embeddings ce ON ce.index_version_id = v.id"
        " AND ce.embedded_at > now() - make_interval(secs => %s)"
        " WHERE %s::int IS NULL OR v.id = %s",
        (window_s, version_id, version_id),
    ).fetchone()
    return count / max(float(span), 1.0) if count >= 2 else 0.0


def eta_seconds(pending: int, rate: float) -> float | None:
    """Seconds to finish `pending` chunks at `rate`; 0 when nothing is pending, None when nothing moves."""
    if pending == 0:
        return 0.0
    return pending / rate if rate > 0 else None


def stuck_workers(conn: psycopg.Connection, stuck_after_s: float, gone_after_s: float) -> list[dict]:
    """Live workers (heartbeating) holding chunks without progress for `stuck_after_s`: hung."""
    rows = conn.execute(
        "SELECT name, chunks_held, extract(epoch FROM now() - last_progress_at) FROM worker_heartbeats"
        " WHERE chunks_held > 0 AND last_progress_at < now() - make_interval(secs => %s)"
        " AND last_seen_at > now() - make_interval(secs => %s) ORDER BY name",
        (stuck_after_s, gone_after_s),
    ).fetchall()
    return [{"name": name, "chunks_held": held, "seconds_without_progress": float(idle)} for name, held, idle in rows]


def gone_workers(conn: psycopg.Connection, gone_after_s: float) -> list[dict]:
    """Workers that stopped heartbeating while they held chunks (killed, or their machine lost):
    the reconciler sends what they held again."""
    rows = conn.execute(
        "SELECT name, chunks_held, extract(epoch FROM now() - last_seen_at) FROM worker_heartbeats"
        " WHERE chunks_held > 0 AND last_seen_at < now() - make_interval(secs => %s) ORDER BY name",
        (gone_after_s,),
    ).fetchall()
    return [{"name": name, "chunks_held": held, "seconds_since_seen": float(silent)} for name, held, silent in rows]
