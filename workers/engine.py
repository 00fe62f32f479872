"""The embed engine: a pipeline that keeps the device busy while tasks come and go.

    submit(task) ─▶ claim ─▶ tokenize+plan ─▶ forward ─▶ sink ─▶ future resolved
                   Postgres   CPU (Rust)      device     Milvus upsert, Postgres mark

`claim` merges the tasks waiting within `collect_ms` and claims their pending chunks;
`tokenize` plans length-sorted batches under the token budget and pads them; `forward` runs
the model (splitting a batch that runs out of device memory); `sink` writes vectors in bulk
and only then resolves the tasks whose chunks are all stored: a task is acknowledged after its
chunks are in both stores, even when they were split across batches.
"""

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import psycopg

from workers import metrics
from workers.batching import plan_batches
from workers.contracts import EmbedTask
from workers.embedding import Encoder, load_encoder
from workers.errors import DeviceOutOfMemory, is_outage
from workers.heartbeat import Heartbeat
from workers.holdings import Holdings
from workers.ledger import Job, Ledger
from workers.messages import Batch, Embedded, Failed, WorkGroup, chunk_ids_of
from workers.pipeline import STOP, Stage, drain
from workers.settings import FleetSettings
from workers.stores import catalog, milvus, outbox, postgres, progress
from workers.stores.catalog import IndexVersion

log = logging.getLogger(__name__)

# Batches waiting for the device: enough to hide a slow tokenize or sink, few enough to bound memory.
FORWARD_QUEUE = 4
SINK_QUEUE = 8
SINK_ROWS = 2048
# Chunks claimed together: a few batches' worth, so tasks finish (and new ones arrive) steadily.
CLAIM_CHUNKS = 256
# While the device waits for its next batch (at start, after a lull), groups are small: the first
# forward starts as soon as one task's chunks are tokenized, not after the whole backlog's.
STARVING_CLAIM_CHUNKS = 16
MIN_BUDGET_TOKENS = 512
BUDGET_GROWTH = 1.02
# Long enough to finish the batches in flight; a dead stage must not hang a worker's shutdown.
CLOSE_TIMEOUT_S = 120
# Abandoning (Ctrl-C) waits only for the batch each stage has in hand.
ABANDON_TIMEOUT_S = 5


class EmbedEngine:
    """One per worker process: owns the encoders, two Postgres connections and a Milvus client."""

    def __init__(
        self,
        settings: FleetSettings,
        encoder_loader: Callable[[str, str, str], Encoder] | None = None,
        name: str | None = None,
    ):
        self.settings = settings
        self.name = name
        self.chunks_done = 0
        self._heartbeat: Heartbeat | None = None
        self.budget = settings.batch_tokens
        self.peak_memory_bytes = 0
        self.first_forward_at: float | None = None  # perf_counter() when the first forward pass began
        self._load_encoder = encoder_loader or self._load
        self._encoders: dict[tuple[str, str], Encoder] = {}  # by (model, quantize)
        self._versions: dict[int, IndexVersion] = {}
        self._collections_ready: set[str] = set()
        self._conns: dict[str, psycopg.Connection] = {}
        self._milvus = None
        self.ledger = Ledger()
        self._requests: queue.Queue = queue.Queue()
        self.stages: list[Stage] = []
        self._abandoned = threading.Event()
        self._stopped_error = RuntimeError("the embed engine was stopped")
        self.holdings = Holdings()
        # Called once when a stage dies (after the work in flight was failed): the Celery worker
        # shuts itself down so that its supervisor starts a fresh one.
        self.on_broken: Callable[[], None] = lambda: None

    # -- public -----------------------------------------------------------------------------

    def start(self) -> "EmbedEngine":
        if not self.stages:
            groups: queue.Queue = queue.Queue(maxsize=2)
            batches: queue.Queue = queue.Queue(maxsize=FORWARD_QUEUE)
            results: queue.Queue = queue.Queue(maxsize=SINK_QUEUE)
            self.stages = [
                Stage("claim", self._requests, self._claim, groups, self._abort, self._stage_died),
                Stage("tokenize", groups, self._tokenize, batches, self._abort, self._stage_died),
                Stage("forward", batches, self._forward, results, self._abort, self._stage_died),
                Stage("sink", results, self._sink, None, self._abort, self._stage_died),
            ]
            for stage in self.stages:
                stage.start()
            if self.name:
                self._heartbeat = Heartbeat(self.settings, self.name, self.holdings, lambda: self.chunks_done)
                self._heartbeat.start()
        return self

    def submit(self, task: EmbedTask) -> Future:
        """Queue a task; the future resolves to an EmbedResult once its chunks are in both stores."""
        self.check_healthy()
        job = Job(task)
        self.start()
        self._requests.put(job)
        return job.future

    def health(self) -> tuple[bool, str]:
        """(sound, why): the pipeline's stages alive and the heartbeat thread beating."""
        dead = self._dead_stage()
        if dead:
            return False, f"the {dead.name} stage stopped: {dead.error!r}"
        if not self.stages:
            return False, "the embed engine is not started"
        if self._heartbeat is not None and not self._heartbeat.alive:
            return False, "the heartbeat thread stopped"
        return True, f"ok: {self.ledger.chunks_held()} chunks held, {self.chunks_done} done"

    def check_healthy(self) -> None:
        dead = self._dead_stage()
        if dead:
            raise RuntimeError(f"the embed engine's {dead.name} stage stopped") from dead.error

    def _dead_stage(self) -> Stage | None:
        return next((stage for stage in self.stages if stage.error is not None), None)

    def preload(self, model: str, quantize: str = "none") -> None:
        self._encoder(model, quantize)

    def stats(self) -> dict:
        return {stage.name: stage.stats.to_dict() for stage in self.stages}

    def close(self, abandon: bool = False) -> None:
        """Finish the work in flight, then stop the stages. `abandon`: drop the work still queued
        (its chunks stay pending in Postgres for the next run) and stop within seconds."""
        if self.stages:
            if abandon:
                self._abandoned.set()  # stages drop what they hold instead of working on it
                self._drop_queued(self._stopped_error)
            self._requests.put(STOP)
            for stage in self.stages:
                stage.join(timeout=ABANDON_TIMEOUT_S if abandon else CLOSE_TIMEOUT_S)
            self.stages = []
            self.ledger.abort_all(RuntimeError("the embed engine was closed"))
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _stage_died(self, stage: Stage) -> None:
        """Fail everything in flight at once (Celery retries those tasks, on this worker's way out
        or on another worker) instead of leaving it until the next task arrives."""
        error = RuntimeError(f"the embed engine's {stage.name} stage stopped: {stage.error!r}")
        self._drop_queued(error)
        self.ledger.abort_all(error)
        self.on_broken()

    def _drop_queued(self, error: Exception) -> None:
        for inbox in [stage.inbox for stage in self.stages]:
            while True:
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not STOP:
                    self._abort(item, error)

    # -- stages -----------------------------------------------------------------------------

    def _claim(self, first: Job) -> Iterator[WorkGroup]:
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

    def _device_starving(self) -> bool:
        """No batch waits for the forward stage: whatever is tokenized next goes straight to it."""
        return len(self.stages) > 2 and self.stages[2].inbox.empty()

    def _collect(self, first: Job) -> list[Job]:
        """`first` and the tasks arriving within collect_ms, up to CLAIM_CHUNKS chunks (fewer while
        the device waits)."""
        jobs = [first]
        limit = STARVING_CLAIM_CHUNKS if self._device_starving() else CLAIM_CHUNKS
        deadline = time.monotonic() + self.settings.collect_ms / 1000
        while sum(len(job.task.chunk_ids) for job in jobs) < limit:
            try:
                job = self._requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is STOP:
                self._requests.put(STOP)  # seen again by the stage loop, after this round
                break
            jobs.append(job)
        return jobs

    def _claim_version(self, version_id: int, jobs: list[Job]) -> WorkGroup | None:
        """Claim the pending chunks of `jobs` for one version; open the jobs in the ledger."""
        version = self._version(version_id)
        if version is None:  # dropped by `migrate cleanup`: its rows went with it, nothing to do
            for job in jobs:
                self.ledger.open(job, version_id, [], set())
            return None
        wanted = list(dict.fromkeys(cid for job in jobs for cid in job.task.chunk_ids))
        claimed = progress.claim(self._conn("claim"), version_id, wanted)
        gave_up = {c.id for c in claimed if c.attempts > self.settings.max_attempts}
        if gave_up:
            metrics.FAILURES.labels("attempts").inc(len(gave_up))
            progress.record_failure(
                self._conn("claim"),
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

    def _tokenize(self, first: WorkGroup) -> Iterator[Batch | Failed]:
        # Groups already waiting are planned together: fuller batches when work is plentiful,
        # no waiting when it is not.
        limit = len(first.chunks) if self._device_starving() else 2 * CLAIM_CHUNKS
        groups, stop_seen = drain(self.stages[1].inbox, first, limit, lambda group: len(group.chunks))
        merged: dict[int, WorkGroup] = {}
        for group in groups:
            if group.version.id in merged:
                merged[group.version.id].chunks.extend(group.chunks)
            else:
                merged[group.version.id] = WorkGroup(group.version, list(group.chunks))
        try:
            for group in merged.values():
                try:
                    yield from self._plan(group)
                except Exception as err:  # this group's tasks fail (and retry); the others go on
                    log.exception("could not tokenize %d chunks", len(group.chunks))
                    self._abort(group, err)
        finally:
            if stop_seen:
                self.stages[1].inbox.put(STOP)

    def _plan(self, group: WorkGroup) -> Iterator[Batch | Failed]:
        """Tokenize a group, then cut it into length-sorted batches under the budget, padded."""
        if self._abandoned.is_set():
            self._abort(group, self._stopped_error)
            return
        encoder = self._encoder(group.version.model, group.version.quantize)
        ids = encoder.tokenize([chunk.text for chunk in group.chunks])
        limit = self.settings.batch_tokens
        too_long = {i for i, sequence in enumerate(ids) if len(sequence) > limit}
        if too_long:
            yield Failed(
                group.version,
                [group.chunks[i].id for i in too_long],
                "too_long",
                f"longer than the batch budget of {limit} tokens: raise FLEET_BATCH_TOKENS",
            )
        keep = [i for i in range(len(ids)) if i not in too_long]
        lengths = [len(ids[i]) for i in keep]
        # After an OOM the budget is lower; a chunk above it still goes, in a batch of its own.
        budget = max([self.budget, *lengths])
        for batch in plan_batches(lengths, budget, packed=encoder.packs_sequences):
            members = [keep[i] for i in batch]
            if self._abandoned.is_set():
                self._abort(WorkGroup(group.version, [group.chunks[i] for i in members]), self._stopped_error)
                continue
            batch_ids = [ids[i] for i in members]
            yield Batch(group.version, [group.chunks[i] for i in members], batch_ids, encoder.collate(batch_ids))

    def _forward(self, item: Batch | Failed) -> Iterator[Embedded | Failed]:
        if self._abandoned.is_set() and isinstance(item, Batch):
            self._abort(item, self._stopped_error)
            return
        if isinstance(item, Failed):
            yield item
            return
        yield from self._forward_splitting(self._encoder(item.version.model, item.version.quantize), item)

    def _forward_splitting(self, encoder: Encoder, batch: Batch) -> Iterator[Embedded | Failed]:
        """Forward a batch; on device OOM shrink the budget and forward its halves."""
        started = time.perf_counter()
        try:
            vectors = encoder.forward(batch.features, batch.version.dim)
        except DeviceOutOfMemory as err:
            metrics.FAILURES.labels("oom_split").inc()
            cost = batch.tokens if encoder.packs_sequences else batch.padded_tokens
            self.budget = max(MIN_BUDGET_TOKENS, int(min(self.budget, cost) * 0.75))
            log.warning("%s; batch budget now %d tokens", err, self.budget)
            if len(batch.chunks) == 1:
                raise  # transient: the task retries, and the chunk's attempts bound the retries
            middle = len(batch.chunks) // 2
            for part in (slice(0, middle), slice(middle, None)):
                ids = batch.ids[part]
                half = Batch(batch.version, batch.chunks[part], ids, encoder.collate(ids))
                yield from self._forward_splitting(encoder, half)
            return
        padded = batch.tokens if encoder.packs_sequences else batch.padded_tokens
        if self.first_forward_at is None:
            self.first_forward_at = started
        # Memory freed since an OOM (other models, fragmentation): win the budget back slowly.
        self.budget = min(self.settings.batch_tokens, int(self.budget * BUDGET_GROWTH) + 1)
        self.peak_memory_bytes = max(self.peak_memory_bytes, encoder.peak_memory_bytes())
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(batch.chunks))
        metrics.BATCH_PADDING.observe(1 - batch.tokens / padded)
        metrics.TOKENS_EMBEDDED.inc(batch.tokens)
        metrics.GPU_MEMORY.set(self.peak_memory_bytes)
        yield Embedded(batch.version, batch.chunks, vectors)

    def _sink(self, first: Embedded | Failed) -> None:
        items, stop_seen = drain(self.stages[3].inbox, first, SINK_ROWS, lambda item: len(chunk_ids_of(item)[1]))
        try:
            for item in items:
                if isinstance(item, Failed):
                    metrics.FAILURES.labels(item.kind).inc(len(item.chunk_ids))
                    progress.record_failure(self._conn("sink"), item.version.id, item.chunk_ids, item.kind, item.error)
                    self.ledger.failed(item.version.id, item.chunk_ids)
            self._store([item for item in items if isinstance(item, Embedded)])
        except Exception as err:
            if is_outage(err):
                self._milvus = None  # reconnect on the next write
            for item in items:
                self._abort(item, err)
        if stop_seen:
            self.stages[3].inbox.put(STOP)

    def _store(self, items: list[Embedded]) -> None:
        by_version: dict[int, list[Embedded]] = defaultdict(list)
        for item in items:
            by_version[item.version.id].append(item)
        for version_items in by_version.values():
            version = version_items[0].version
            rows = [
                milvus.VectorRow(chunk.id, chunk.document_id, chunk.access_level, vector)
                for item in version_items
                for chunk, vector in zip(item.chunks, item.vectors, strict=True)
            ]
            client = self._vectors()
            if version.collection not in self._collections_ready:
                milvus.ensure_collection(client, version.collection, version.dim)
                self._collections_ready.add(version.collection)
            with metrics.SINK_SECONDS.labels("milvus").time():
                milvus.upsert(client, version.collection, rows)
            ids = [row.chunk_id for row in rows]
            conn = self._conn("sink")
            with metrics.SINK_SECONDS.labels("postgres").time(), conn.transaction():
                marked = progress.mark_embedded(conn, version.id, ids)
                # A chunk deleted by a re-ingest while we embedded it: its vector must not stay
                # behind. The outbox row commits with the marks, so a failed delete is retried.
                orphans = [chunk_id for chunk_id in ids if chunk_id not in marked]
                outbox.add(conn, orphans, "deleted while it was embedded")
            if orphans:
                outbox.apply_if_possible(conn, client)
            self.ledger.stored(version.id, ids, marked)
            self.chunks_done += len(marked)
            metrics.CHUNKS_EMBEDDED.inc(len(marked))

    def _abort(self, item: Any, error: Exception) -> None:
        """A stage could not handle `item`: its tasks fail (and retry). When a service was out, the
        attempt their claim counted is given back: an outage must not use up a chunk's attempts."""
        metrics.FAILURES.labels("outage" if is_outage(error) else "stage_error").inc()
        if isinstance(item, Job):
            if not item.future.done():
                item.future.set_exception(error)
            return
        version_id, chunk_ids = chunk_ids_of(item)
        if is_outage(error):
            self._refund(version_id, chunk_ids)
        self.ledger.abort(version_id, chunk_ids, error)

    def _refund(self, version_id: int, chunk_ids: list[str]) -> None:
        try:
            progress.refund_attempts(self._conn("claim"), version_id, chunk_ids)
        except Exception as err:  # Postgres is the one out: the attempt stays counted, once
            log.warning("could not give back the attempts of %d chunks: %s", len(chunk_ids), err)

    # -- resources ----------------------------------------------------------------------------

    def _conn(self, stage: str) -> psycopg.Connection:
        """The claim and sink stages each have their own connection (psycopg serialises a connection)."""
        conn = self._conns.get(stage)
        if conn is None or conn.closed or conn.broken:
            conn = self._conns[stage] = postgres.connect(self.settings)
        return conn

    def _vectors(self):
        if self._milvus is None:
            self._milvus = milvus.connect(self.settings)
        return self._milvus

    def _version(self, version_id: int) -> IndexVersion | None:
        if version_id not in self._versions:
            version = catalog.get_version(self._conn("claim"), version_id)
            if version is None:
                return None
            self._versions[version_id] = version
        return self._versions[version_id]

    def _load(self, model: str, device: str, quantize: str) -> Encoder:
        return load_encoder(model, device, self.settings.attention, quantize)

    def _encoder(self, model: str, quantize: str = "none") -> Encoder:
        """The encoder of an index version's model, loaded on first use and kept."""
        key = (model, quantize)
        if key not in self._encoders:
            self._encoders[key] = self._load_encoder(model, self.settings.device, quantize)
            metrics.MODEL_LOADED.labels(model if quantize == "none" else f"{model} ({quantize})").set(1)
        return self._encoders[key]
