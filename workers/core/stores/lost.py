"""Pending chunks whose task is lost: held by no live worker, and their message cannot still be
waiting in the broker (see workers/reconciler.py, which sends them again; `producer status` and
the exporter count them). A pure decision (`cutoffs`) and one query on the pending index.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from workers.core.settings import FleetSettings

# Send-order slack between two producers that record and publish concurrently.
ORDER_MARGIN_S = 5.0
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Cutoffs:
    never_sent_before: datetime  # a chunk never sent and queued before this is lost
    sent_before: datetime  # a chunk sent before this is lost


def cutoffs(
    now: datetime, consumed_sent_at: datetime | None, queue_depth: int | None, resend_after_s: float
) -> Cutoffs:
    """Which pending chunks, held by no live worker, have lost their task.

    `consumed_sent_at`: the send time of the newest message a worker took; `queue_depth`: messages
    waiting in the broker (None when it cannot be read: then only what the workers took counts).
    """
    grace = now - timedelta(seconds=resend_after_s)
    if queue_depth == 0:
        return Cutoffs(grace, grace)
    taken = consumed_sent_at - timedelta(seconds=ORDER_MARGIN_S) if consumed_sent_at else _NEVER
    return Cutoffs(grace, min(grace, taken))


_LOST = """
WITH held AS (
    SELECT DISTINCT unnest(held_chunk_ids) AS chunk_id FROM worker_heartbeats
    WHERE last_seen_at > now() - make_interval(secs => %(gone_after_s)s)
)
SELECT {columns} FROM chunk_embeddings ce
WHERE ce.embedded_at IS NULL AND ce.failed_at IS NULL
  -- Implied by the next line (sent_before <= never_sent_before): the index chunk_embeddings_waiting
  -- then reads only the chunks waiting since before the cutoff, not every pending one.
  AND coalesce(ce.sent_at, ce.queued_at) < %(never_sent_before)s
  AND ((ce.sent_at IS NULL AND ce.queued_at < %(never_sent_before)s) OR ce.sent_at < %(sent_before)s)
  AND ce.index_version_id IN (SELECT id FROM index_versions WHERE state IN ('live', 'building'))
  AND NOT EXISTS (SELECT 1 FROM held WHERE held.chunk_id = ce.chunk_id)
"""
# `producer status` counts lost chunks up to here: past it, what matters is that they are being
# sent again, not how many (a count is a walk over them all).
COUNT_UP_TO = 100_000


def _clock(conn: psycopg.Connection) -> tuple[datetime, datetime | None]:
    """Postgres's now and the newest send time any worker has taken from the broker."""
    return conn.execute("SELECT now(), (SELECT max(consumed_sent_at) FROM worker_heartbeats)").fetchone()


def current_cutoffs(conn: psycopg.Connection, settings: FleetSettings) -> Cutoffs:
    from workers.core.broker import queue_depth  # Celery: only where a broker is set (status stays light)

    now, consumed = _clock(conn)
    return cutoffs(now, consumed, queue_depth(settings), settings.resend_after_s)


def count_lost(conn: psycopg.Connection, settings: FleetSettings) -> int:
    """Pending chunks whose task is lost and not sent again yet (what `producer status` shows),
    counted up to COUNT_UP_TO."""
    limits = current_cutoffs(conn, settings)
    query = f"SELECT count(*) FROM ({_LOST.format(columns='1')} LIMIT %(limit)s) AS lost"
    (count,) = conn.execute(query, {**_params(limits, settings), "limit": COUNT_UP_TO}).fetchone()
    return count


def lost_chunks(conn: psycopg.Connection, settings: FleetSettings, limit: int) -> dict[int, list[str]]:
    """The lost chunks, by index version: the `limit` waiting longest (read in that order from the
    index, so that a round costs `limit` rows whatever the backlog)."""
    limits = current_cutoffs(conn, settings)
    query = _LOST.format(columns="ce.index_version_id, ce.chunk_id")
    query += " ORDER BY coalesce(ce.sent_at, ce.queued_at) LIMIT %(limit)s"
    lost: dict[int, list[str]] = {}
    for version_id, chunk_id in conn.execute(query, {**_params(limits, settings), "limit": limit}):
        lost.setdefault(version_id, []).append(chunk_id)
    return lost


def _params(limits: Cutoffs, settings: FleetSettings) -> dict:
    return {
        "gone_after_s": settings.worker_gone_after_s,
        "never_sent_before": limits.never_sent_before,
        "sent_before": limits.sent_before,
    }
