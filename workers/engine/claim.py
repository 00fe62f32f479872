"""The claim stage: merge the tasks that arrive together and claim their pending chunks.

Tasks waiting within `collect_ms` are merged (up to CLAIM_CHUNKS chunks, fewer while the device
waits for work), grouped by index version, and their chunks claimed in Postgres. A chunk past
FLEET_MAX_ATTEMPTS deliveries is recorded as failed instead of claimed again.
"""

import logging
import queue
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from workers import metrics
from workers.core.settings import FleetSettings
from workers.core.stores import progress
from workers.engine.ledger import Job, Ledger
from workers.engine.messages import WorkGroup
from workers.engine.pipeline import STOP
from workers.engine.resources import Resources

log = logging.getLogger(__name__)

# Chunks claimed together: a few batches' worth, so tasks finish (and new ones arrive) steadily.
CLAIM_CHUNKS = 256
# While the device waits for its next batch (at start, after a lull), groups are small: the first
# forward starts as soon as one task's chunks are tokenized, not after the whole backlog's.
STARVING_CLAIM_CHUNKS = 16


class Claim:
    def __init__(
        self,
        settings: FleetSettings,
        resources: Resources,
        ledger: Ledger,
        requests: queue.Queue,
        starving: Callable[[], bool],
    ):
        self.settings = settings
        self.resources = resources
        self.ledger = ledger
        self.requests = requests
        self.starving = starving

    def __call__(self, first: Job) -> Iterator[WorkGroup]:
        by_version: dict[int, list[Job]] = defaultdict(list)
        for job in self._collect(first):
            by_version[job.task.index_version].append(job)
        for version_id, jobs in by_version.items():
            try:  # one version's trouble (its rows gone, Postgres down) fails only its tasks
                group = self._claim_version(version_id, jobs)
            except Exception as err:
                log.warning("could not claim chunks of version %d: %s", version_id, err)
                self.ledger.fail_jobs(jobs, err)
                continue
            if group is not None:
                yield group

    def _collect(self, first: Job) -> list[Job]:
        """`first` and the tasks arriving within collect_ms, up to CLAIM_CHUNKS chunks (fewer while
        the device waits)."""
        jobs = [first]
        limit = STARVING_CLAIM_CHUNKS if self.starving() else CLAIM_CHUNKS
        deadline = time.monotonic() + self.settings.collect_ms / 1000
        while sum(len(job.task.chunk_ids) for job in jobs) < limit:
            try:
                job = self.requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is STOP:
                self.requests.put(STOP)  # seen again by the stage loop, after this round
                break
            jobs.append(job)
        return jobs

    def _claim_version(self, version_id: int, jobs: list[Job]) -> WorkGroup | None:
        """Claim the pending chunks of `jobs` for one version; open the jobs in the ledger."""
        version = self.resources.version(version_id)
        if version is None:  # dropped by `migrate cleanup`: its rows went with it, nothing to do
            for job in jobs:
                self.ledger.open(job, version_id, [], set())
            return None
        wanted = list(dict.fromkeys(cid for job in jobs for cid in job.task.chunk_ids))
        conn = self.resources.conn("claim")
        claimed = progress.claim(conn, version_id, wanted)
        gave_up = {c.id for c in claimed if c.attempts > self.settings.max_attempts}
        if gave_up:
            metrics.FAILURES.labels("attempts").inc(len(gave_up))
            progress.record_failure(
                conn,
                version_id,
                sorted(gave_up),
                "attempts",
                f"gave up after {self.settings.max_attempts} deliveries (the worker died or the task failed each "
                "time; see the worker log)",
            )
        claimed_ids = {c.id for c in claimed}
        for job in jobs:
            self.ledger.open(job, version_id, [i for i in job.task.chunk_ids if i in claimed_ids], gave_up)
        chunks = [c for c in claimed if c.id not in gave_up]
        return WorkGroup(version, chunks) if chunks else None
