"""Send again the work whose task was lost, and carry out the Milvus outbox: no human needed.

Postgres knows what is pending; a task message can still be lost — the broker restarted empty, a
worker was killed holding tasks, a producer died between its commit and its send. A pending chunk
is lost when no live worker holds it (heartbeats list what each holds) and its task cannot still
be waiting in the broker:
- it was never sent, and was queued more than FLEET_RESEND_AFTER_S ago; or
- it was sent more than FLEET_RESEND_AFTER_S ago, and either the queue is empty, or the workers
  have taken a message sent after it (the broker hands messages out in the order they were sent).

`cutoffs` decides that, a pure function; `Reconciler` runs it in every worker, one at a time (a
Postgres advisory lock elects the one), every FLEET_RECONCILE_S, sending the lost chunks again
(their ids are deterministic, so a chunk sent twice is embedded once) and applying the outbox.
"""

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from celery import Celery

from workers.core import sending
from workers.core.broker import queue_depth
from workers.core.failures import classify, explain, is_outage
from workers.core.settings import FleetSettings
from workers.core.stores import audit, milvus, outbox, postgres

log = logging.getLogger(__name__)

_LEADER_LOCK = 7_340_213
# Send-order slack between two producers that record and publish concurrently.
ORDER_MARGIN_S = 5.0
RESEND_PER_ROUND = 20_000
# Heartbeat rows of workers gone this long are forgotten (status stops listing them).
FORGET_GONE_AFTER_S = 3600
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
JOIN index_versions v ON v.id = ce.index_version_id AND v.state IN ('live', 'building')
WHERE ce.embedded_at IS NULL AND ce.failed_at IS NULL
  AND ((ce.sent_at IS NULL AND ce.queued_at < %(never_sent_before)s) OR ce.sent_at < %(sent_before)s)
  AND NOT EXISTS (SELECT 1 FROM held WHERE held.chunk_id = ce.chunk_id)
"""


def _clock(conn: psycopg.Connection) -> tuple[datetime, datetime | None]:
    """Postgres's now and the newest send time any worker has taken from the broker."""
    return conn.execute("SELECT now(), (SELECT max(consumed_sent_at) FROM worker_heartbeats)").fetchone()


def current_cutoffs(conn: psycopg.Connection, settings: FleetSettings) -> Cutoffs:
    now, consumed = _clock(conn)
    return cutoffs(now, consumed, queue_depth(settings), settings.resend_after_s)


def count_lost(conn: psycopg.Connection, settings: FleetSettings) -> int:
    """Pending chunks whose task is lost and not sent again yet (what `producer status` shows)."""
    limits = current_cutoffs(conn, settings)
    query = _LOST.format(columns="count(*)")
    (count,) = conn.execute(query, _params(limits, settings)).fetchone()
    return count


def lost_chunks(
    conn: psycopg.Connection, settings: FleetSettings, limit: int = RESEND_PER_ROUND
) -> dict[int, list[str]]:
    """The lost chunks, by index version (at most `limit`)."""
    limits = current_cutoffs(conn, settings)
    query = _LOST.format(columns="ce.index_version_id, ce.chunk_id") + " ORDER BY 1, 2 LIMIT %(limit)s"
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


class Reconciler:
    """A thread in each worker; the one holding the advisory lock does the work."""

    def __init__(self, settings: FleetSettings, app: Celery):
        self.settings = settings
        self.app = app
        self._conn: psycopg.Connection | None = None
        self._leader = False  # holds the advisory lock on self._conn
        self._milvus = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> "Reconciler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._conn is not None:
            self._conn.close()  # releases the lock: another worker's reconciler takes over

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reconcile_s):
            try:
                self.run_once()
            except Exception as err:  # the next round tries again, from a fresh connection
                if is_outage(err):
                    log.warning("reconciler waits: %s", explain(err))
                else:
                    log.error("reconciler round failed (%s): %s", classify(err), explain(err), exc_info=True)
                self._reset()

    def run_once(self) -> None:
        """One round: become (or stay) the one reconciler, apply the outbox, send lost work again."""
        conn = self._connection()
        if not self._leader:
            (self._leader,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_LOCK,)).fetchone()
        if not self._leader:
            return
        if self._milvus is None:
            self._milvus = milvus.connect(self.settings)
        outbox.apply_if_possible(conn, self._milvus)
        resent = 0
        for version_id, chunk_ids in lost_chunks(conn, self.settings).items():
            resent += sending.send(self.app, conn, version_id, chunk_ids, self.settings.task_chunks)
        if resent:
            log.warning("sent %d chunks again: their tasks were lost (broker restart, worker killed...)", resent)
        conn.execute(
            "DELETE FROM worker_heartbeats WHERE last_seen_at < now() - make_interval(secs => %s)",
            (FORGET_GONE_AFTER_S,),
        )
        audit.prune(conn, self.settings.search_log_days)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = postgres.connect(self.settings)
            self._leader = False  # the lock went with the old session
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
        self._leader = False
        self._milvus = None
