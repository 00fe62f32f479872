"""Where embed tasks go: to Celery workers through the broker, or to an engine in this process."""

import time
from concurrent.futures import Future
from typing import Protocol

import psycopg
from tqdm import tqdm

from workers.constants import EMBED_QUEUE, EMBED_TASK
from workers.contracts import EmbedTask
from workers.errors import ServiceUnavailable
from workers.settings import FleetSettings
from workers.stores import progress
from workers.stores.catalog import IndexVersion

POLL_S = 0.5


class Dispatcher(Protocol):
    def send(self, tasks: list[EmbedTask]) -> None: ...

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        """Block until the work sent is done (or recorded as failed), showing progress."""

    def close(self, abandon: bool = False) -> None:
        """Release what sending needed; `abandon` (an interrupt): stop now, leaving work pending."""


def make_tasks(version_id: int, chunk_ids: list[str], size: int) -> list[EmbedTask]:
    return [EmbedTask(version_id, chunk_ids[start : start + size]) for start in range(0, len(chunk_ids), size)]


def send_pending(dispatcher: Dispatcher, conn: psycopg.Connection, version: IndexVersion, task_chunks: int) -> int:
    """Send every chunk still pending for `version`; returns how many."""
    pending = progress.pending_chunk_ids(conn, version.id)
    dispatcher.send(make_tasks(version.id, pending, task_chunks))
    return len(pending)


class CeleryDispatcher:
    """Enqueue on the broker; `wait` polls Postgres until nothing is pending."""

    def __init__(self, settings: FleetSettings):
        from workers.celery_app import create_app

        self.app = create_app(settings)
        self.stall_after_s = settings.stuck_after_s

    def send(self, tasks: list[EmbedTask]) -> None:
        for task in tasks:
            self.app.send_task(EMBED_TASK, kwargs=task.to_kwargs(), queue=EMBED_QUEUE)

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
        self._futures: list[tuple[EmbedTask, Future]] = []

    def send(self, tasks: list[EmbedTask]) -> None:
        self._futures += [(task, self._engine.submit(task)) for task in tasks]

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
