"""Where embed tasks go: to Celery workers through the broker, or to an engine in this process.

A broker that cannot be reached does not stop the command: the chunks are registered in Postgres
(the truth), counted as unsent, and the workers' reconciler sends them once the broker is back.
"""

import logging
import time
from collections import deque
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
# Chunks the in-process engine is given at most at once: a send waits for the oldest tasks past it,
# so that a corpus of millions is never held in memory as tasks (nor claimed as held work).
IN_FLIGHT_CHUNKS = 20_000


class Dispatcher(Protocol):
    unsent: int  # chunks that could not be sent (the broker was out): the reconciler sends them

    def send(self, conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> int:
        """Send these chunks to be embedded; returns how many were sent."""

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        """Block until the work sent is done (or recorded as failed), showing progress."""

    def close(self, abandon: bool = False) -> None:
        """Release what sending needed; `abandon` (an interrupt): stop now, leaving work pending."""


def send_pending(dispatcher: Dispatcher, conn: psycopg.Connection, version: IndexVersion) -> int:
    """Send every chunk still pending for `version`, a key range at a time; returns how many were sent."""
    return sum(dispatcher.send(conn, version.id, chunk_ids) for chunk_ids in progress.pending_batches(conn, version.id))


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
        self.settings = settings
        self.task_chunks = settings.task_chunks
        self.unsent = 0
        self._engine = None  # started on the first send: a run with nothing to embed loads no model
        self._futures: deque[tuple[EmbedTask, Future]] = deque()
        self._in_flight = 0  # chunks of the tasks in _futures
        self._sent = 0

    def send(self, conn: psycopg.Connection, version_id: int, chunk_ids: list[str]) -> int:
        if chunk_ids and self._engine is None:
            from workers.engine import EmbedEngine

            self._engine = EmbedEngine(self.settings).start()
        for task in sending.make_tasks(version_id, chunk_ids, self.task_chunks):
            self._futures.append((task, self._engine.submit(task)))
            self._in_flight += len(task.chunk_ids)
        self._sent += len(chunk_ids)
        self._finish(down_to=IN_FLIGHT_CHUNKS)
        return len(chunk_ids)

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        with tqdm(total=self._sent, desc="embedded", unit="chunk", disable=None) as bar:
            self._finish(down_to=0, bar=bar)
        self.close()

    def _finish(self, down_to: int, bar: tqdm | None = None) -> None:
        """Wait for the oldest tasks until at most `down_to` chunks are in flight."""
        if bar is not None:
            bar.update(self._sent - self._in_flight)
        try:
            while self._futures and self._in_flight > down_to:
                task, future = self._futures.popleft()
                future.result()
                self._in_flight -= len(task.chunk_ids)
                if bar is not None:
                    bar.update(len(task.chunk_ids))
        except BaseException:  # a failed task or Ctrl-C: stop at once, the rest stays pending
            self.close(abandon=True)
            raise

    def close(self, abandon: bool = False) -> None:
        self._futures.clear()
        self._in_flight = 0
        if self._engine is not None:
            self._engine.close(abandon=abandon)
            self._engine = None
