"""Send again the work whose task was lost, and carry out the Milvus outbox: no human needed.

Postgres knows what is pending; a task message can still be lost — the broker restarted empty, a
worker was killed holding tasks, a producer died between its commit and its send. A pending chunk
is lost when no live worker holds it (heartbeats list what each holds) and its task cannot still
be waiting in the broker:
- it was never sent, and was queued more than FLEET_RESEND_AFTER_S ago; or
- it was sent more than FLEET_RESEND_AFTER_S ago, and either the queue is empty, or the workers
  have taken a message sent after it (the broker hands messages out in the order they were sent).

`workers.core.stores.lost` decides that (`cutoffs`, a pure function) and finds them; `Reconciler`
runs in every worker, one at a time (a Postgres advisory lock elects the one), every
FLEET_RECONCILE_S, sending the lost chunks again (their ids are deterministic, so a chunk sent
twice is embedded once), applying the outbox and folding the kept counts.
"""

import logging
import threading

import psycopg
from celery import Celery

from workers.core import sending
from workers.core.failures import classify, explain, is_outage
from workers.core.settings import FleetSettings
from workers.core.stores import audit, lost, milvus, outbox, postgres, progress

log = logging.getLogger(__name__)

_LEADER_LOCK = 7_340_213
RESEND_PER_ROUND = 20_000
# Heartbeat rows of workers gone this long are forgotten (status stops listing them).
FORGET_GONE_AFTER_S = 3600


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
        for version_id, chunk_ids in lost.lost_chunks(conn, self.settings, RESEND_PER_ROUND).items():
            resent += sending.send(self.app, conn, version_id, chunk_ids, self.settings.task_chunks)
        if resent:
            log.warning("sent %d chunks again: their tasks were lost (broker restart, worker killed...)", resent)
        conn.execute(
            "DELETE FROM worker_heartbeats WHERE last_seen_at < now() - make_interval(secs => %s)",
            (FORGET_GONE_AFTER_S,),
        )
        audit.prune(conn, self.settings.search_log_days)
        progress.fold_counts(conn)

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
