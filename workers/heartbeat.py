"""A worker's heartbeat in Postgres: what it holds, what it has done, when it last progressed.

`producer status` reads these rows to name workers that hold work but made no progress for
FLEET_STUCK_AFTER_S (hung on a device) and workers gone silent (killed); the reconciler reads the
chunks each live worker holds and the newest message it took from the broker.
"""

import logging
import os
import threading
from collections.abc import Callable

from workers import metrics
from workers.core.failures import Failure, classify, explain
from workers.core.settings import FleetSettings
from workers.core.stores import postgres
from workers.holdings import Holdings

log = logging.getLogger(__name__)

_BEAT = """
INSERT INTO worker_heartbeats AS hb (name, pid, chunks_held, chunks_done, held_chunk_ids, consumed_sent_at)
VALUES (%(name)s, %(pid)s, %(held)s, %(done)s, %(held_ids)s, to_timestamp(%(consumed)s))
ON CONFLICT (name) DO UPDATE SET
    pid = EXCLUDED.pid, last_seen_at = now(), chunks_held = EXCLUDED.chunks_held,
    chunks_done = EXCLUDED.chunks_done, held_chunk_ids = EXCLUDED.held_chunk_ids,
    consumed_sent_at = greatest(hb.consumed_sent_at, EXCLUDED.consumed_sent_at),
    started_at = CASE WHEN EXCLUDED.pid <> hb.pid THEN now() ELSE hb.started_at END,
    -- progress: more chunks done, nothing held (an idle worker is not stuck), or a new process
    last_progress_at = CASE WHEN EXCLUDED.chunks_done > hb.chunks_done OR EXCLUDED.chunks_held = 0
                                 OR EXCLUDED.pid <> hb.pid
                            THEN now() ELSE hb.last_progress_at END
"""


class Heartbeat:
    def __init__(self, settings: FleetSettings, name: str, holdings: Holdings, done: Callable[[], int]):
        self.settings = settings
        self.name = name
        self.holdings = holdings
        self._done = done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._conn = None
        self.problem: str | None = None  # why the last beat failed, unless it was an outage

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.beat()  # the last word: what it still holds (0 after a clean drain)

    def beat(self) -> None:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = postgres.connect(self.settings)
            held = self.holdings.chunk_ids()
            self._conn.execute(
                _BEAT,
                {
                    "name": self.name,
                    "pid": os.getpid(),
                    "held": len(held),
                    "done": self._done(),
                    "held_ids": held,
                    "consumed": self.holdings.consumed_sent_at,
                },
            )
            self.problem = None
        except Exception as err:  # a missed beat must not stop the worker; the next one retries
            failure = classify(err)
            metrics.HEARTBEAT_FAILURES.labels(failure.value).inc()
            log.warning("heartbeat failed (%s): %s", failure, explain(err))
            # Waiting cures an outage; anything else (a bug, a Celery without the state the
            # holdings read) would leave the reconciler blind for good: the worker is unsound.
            self.problem = None if failure is Failure.OUTAGE else f"heartbeats fail: {explain(err)}"

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            self.beat()
