"""Where embed tasks go: to Celery workers through the broker, or to an engine in this process."""

import time
from concurrent.futures import Future
from typing import Protocol

import psycopg
from tqdm import tqdm

from workers.constants import EMBED_QUEUE, EMBED_TASK
from workers.contracts import EmbedResult, EmbedTask
from workers.settings import FleetSettings
from workers.stores import progress
from workers.stores.catalog import IndexVersion

POLL_S = 0.5


class Dispatcher(Protocol):
    def send(self, tasks: list[EmbedTask]) -> None: ...

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        """Block until the work sent is done (or recorded as failed), showing progress."""


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

    def send(self, tasks: list[EmbedTask]) -> None:
        for task in tasks:
            self.app.send_task(EMBED_TASK, kwargs=task.to_kwargs(), queue=EMBED_QUEUE)

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> None:
        totals = [progress.progress(conn, version.id) for version in versions]
        bar = tqdm(total=sum(p.total for p in totals), desc="embedded", unit="chunk", disable=None)
        while True:
            totals = [progress.progress(conn, version.id) for version in versions]
            bar.total = sum(p.total for p in totals)
            bar.n = sum(p.embedded + p.failed for p in totals)
            bar.refresh()
            if not any(p.pending for p in totals):
                break
            time.sleep(POLL_S)
        bar.close()


class InProcessDispatcher:
    """Run the tasks on an embed engine in this process (the embedded default: no broker)."""

    def __init__(self, settings: FleetSettings):
        from workers.engine import EmbedEngine

        self._engine = EmbedEngine(settings).start()
        self._futures: list[tuple[EmbedTask, Future]] = []

    def send(self, tasks: list[EmbedTask]) -> None:
        self._futures += [(task, self._engine.submit(task)) for task in tasks]

    def wait(self, conn: psycopg.Connection, versions: list[IndexVersion]) -> EmbedResult:
        total = EmbedResult()
        with tqdm(
            total=sum(len(t.chunk_ids) for t, _ in self._futures), desc="embedded", unit="chunk", disable=None
        ) as bar:
            try:
                for task, future in self._futures:
                    total += future.result()
                    bar.update(len(task.chunk_ids))
            finally:
                self._futures.clear()
                self._engine.close()
        return total
