"""Where embed tasks go: to Celery workers through the broker, or to an engine in this process.

A broker that cannot be reached does not stop the command: the chunks are registered in Postgres
(the truth), counted as unsent, and the workers' reconciler sends them once the broker is back.
"""

import logging
import time
from concurrent.futures import Future
from typing import Protocol

import psycopg
from tqdm import tqdm

from workers.core import sending
from workers.core.broker import broker_app
from workers.core.contracts import EmbedTask
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings
from workers.core.stores import progress
from workers.core.stores.catalog import IndexVersion

log = logging.getLogger(__name__)

POLL_S = 0.5


class Dispatcher(Protocol):
    unsent: int  # chunks that could not be sent (the broker was out): the reconciler sends them

    def send(self, conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> int:
        """Send these chunks to be embedded; returns how many were sent."""

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        """Block until the work sent is done (or recorded as failed), showing progress."""

    def close(self, abandon: bool = False) -> None:
        """Release what sending needed; `abandon` (an interrupt): stop now, leaving work pending."""


def send_pending(dispatcher: Dispatcher, conn: psycopg.Connection, version: IndexVersion) -> int:
    """Send every chunk still pending for `version`; returns how many were sent."""
    return dispatcher.send(conn, version.id, progress.pending_chunk_ids(conn, version.id))


class CeleryDispatcher:
    """Enqueue on the broker; `wait` polls Postgres until nothing is pending."""

    def __init__(self, settings: FleetSettings):
        self.app = broker_app(settings)
        self.task_chunks = settings.task_chunks
        self.stall_after_s = settings.stuck_after_s
        self.unsent = 0

    def send(self, conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> int:
        if self.unsent:  # the broker was out earlier in this run: leave the rest to the reconciler
            self.unsent += len(chunk_ids)
            return 0
        try:
            return sending.send(self.app, conn, version_id, chunk_ids, self.task_chunks)
        except ServiceUnavailable as err:
            log.warning("%s: chunks stay pending and the workers' reconciler sends them once it is back", err)
            self.unsent += len(chunk_ids)
            return 0

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        """Poll until nothing is pending; give up when nothing moved for FLEET_STUCK_AFTER_S."""
        bar = tqdm(desc="embedded", unit="chunk", disable=None)
        last_done, last_progress = -1, time.monotonic()
        try:
            while True:
                totals = [progress.progress(conn, version.id) for version in versions]
                done = sum(p.embedded + p.failed for p in totals)
                bar.total, bar.n = sum(p.total for p in totals), done
                bar.refresh()
                if not any(p.pending for p in totals):
                    return
                if done != last_done:
                    last_done, last_progress = done, time.monotonic()
                elif time.monotonic() - last_progress > self.stall_after_s:
                    raise ServiceUnavailable(
                        f"nothing embedded for {self.stall_after_s:.0f}s with {bar.total - done} chunks pending: "
                        "are workers running (`celery -A workers.app worker`)? The work stays queued; "
                        "`producer status` shows it, `producer retry --pending` re-sends it"
                    )
                time.sleep(POLL_S)
        finally:
            bar.close()

    def close(self, abandon: bool = False) -> None:
        """Nothing to stop here: what was sent stays queued for the workers."""


class InProcessDispatcher:
    """Run the tasks on an embed engine in this process (the embedded default: no broker)."""

    def __init__(self, settings: FleetSettings):
        from workers.engine import EmbedEngine

        self._engine = EmbedEngine(settings).start()
        self.task_chunks = settings.task_chunks
        self.unsent = 0
        self._futures: list[tuple[EmbedTask, Future]] = []

    def send(self, conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> int:
        for task in sending.make_tasks(version_id, chunk_ids, self.task_chunks):
            self._futures.append((task, self._engine.submit(task)))
        return len(chunk_ids)

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        total = sum(len(task.chunk_ids) for task, _ in self._futures)
        try:
            with tqdm(total=total, desc="embedded", unit="chunk", disable=None) as bar:
                for task, future in self._futures:
                    future.result()
                    bar.update(len(task.chunk_ids))
        except BaseException:  # a failed task or Ctrl-C: stop at once, the rest stays pending
            self.close(abandon=True)
            raise
        self.close()

    def close(self, abandon: bool = False) -> None:
        self._futures.clear()
        self._engine.close(abandon=abandon)
