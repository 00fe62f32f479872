"""Which task waits for which chunk: a task's future resolves when its last chunk is stored.

A task's chunks may be split across batches and written by several sink flushes; the ledger
counts them down. A chunk shared by two tasks in flight counts for both.
"""

import threading
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

from workers.core.contracts import EmbedResult, EmbedTask


@dataclass
class Job:
    task: EmbedTask
    future: Future = field(default_factory=Future)
    waiting: set[str] = field(default_factory=set)
    embedded: int = 0
    failed: int = 0

    def result(self) -> EmbedResult:
        skipped = len(self.task.chunk_ids) - self.embedded - self.failed
        return EmbedResult(embedded=self.embedded, skipped=skipped, failed=self.failed)


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs_of: dict[tuple[int, str], list[Job]] = defaultdict(list)
        self._open: set[int] = set()
        self._jobs: dict[int, Job] = {}

    def open(self, job: Job, version_id: int, chunk_ids: list[str], failed_ids: set[str]) -> None:
        """Wait for the job's claimed `chunk_ids`, counting `failed_ids` as failed; resolves at once if none."""
        with self._lock:
            job.failed += sum(1 for chunk_id in job.task.chunk_ids if chunk_id in failed_ids)
            job.waiting = set(chunk_ids) - failed_ids
            for chunk_id in job.waiting:
                self._jobs_of[(version_id, chunk_id)].append(job)
            self._jobs[id(job)] = job
            self._settle(job)

    def stored(self, version_id: int, chunk_ids: list[str], embedded: set[str]) -> None:
        """Chunks written to both stores (those in `embedded`) or found gone (the rest)."""
        self._finish(version_id, chunk_ids, embedded=embedded)

    def failed(self, version_id: int, chunk_ids: list[str]) -> None:
        """Chunks recorded as permanently failed."""
        self._finish(version_id, chunk_ids, failed=True)

    def abort(self, version_id: int, chunk_ids: list[str], error: BaseException) -> None:
        """A stage could not handle these chunks: their tasks fail (and Celery retries them)."""
        with self._lock:
            for chunk_id in chunk_ids:
                for job in self._jobs_of.pop((version_id, chunk_id), []):
                    self._fail(job, error)

    def fail_jobs(self, jobs: list[Job], error: BaseException) -> None:
        """These tasks fail as a whole (their chunks could not even be claimed)."""
        with self._lock:
            for job in jobs:
                self._fail(job, error)
                for chunk_id in job.waiting:
                    key = (job.task.index_version, chunk_id)
                    others = [other for other in self._jobs_of.pop(key, []) if other is not job]
                    if others:
                        self._jobs_of[key] = others

    def abort_all(self, error: BaseException) -> None:
        with self._lock:
            for job in list(self._jobs.values()):
                self._fail(job, error)
            self._jobs_of.clear()

    def chunks_held(self) -> int:
        """Chunks of open tasks not stored yet."""
        with self._lock:
            return sum(len(job.waiting) for job in self._jobs.values())

    def _finish(
        self, version_id: int, chunk_ids: list[str], embedded: set[str] = frozenset(), failed: bool = False
    ) -> None:
        with self._lock:
            for chunk_id in chunk_ids:
                for job in self._jobs_of.pop((version_id, chunk_id), []):
                    if chunk_id in job.waiting:
                        job.waiting.discard(chunk_id)
                        job.failed += failed
                        job.embedded += not failed and chunk_id in embedded
                        self._settle(job)

    def _settle(self, job: Job) -> None:
        if not job.waiting and not job.future.done():
            self._jobs.pop(id(job), None)
            job.future.set_result(job.result())

    def _fail(self, job: Job, error: BaseException) -> None:
        self._jobs.pop(id(job), None)
        if not job.future.done():
            job.future.set_exception(error)
