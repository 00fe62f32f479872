"""The embed engine: four stages on threads, joined by bounded queues, that keep the device busy.

    submit(task) ─▶ claim ─▶ tokenize+plan ─▶ forward ─▶ sink ─▶ future resolved
                   Postgres   CPU (Rust)      device     Milvus upsert, Postgres mark

Each stage is an object of its own module (claim.py, tokenize.py, forward.py, sink.py); this one
wires them, takes tasks, reports health, and fails the work in flight when a stage cannot go on.
"""

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from workers import metrics
from workers.core.contracts import EmbedTask
from workers.core.failures import is_outage
from workers.core.settings import FleetSettings
from workers.core.stores import progress
from workers.engine.claim import Claim
from workers.engine.forward import Budget, Forward
from workers.engine.ledger import Job, Ledger
from workers.engine.messages import chunk_ids_of
from workers.engine.pipeline import STOP, Stage
from workers.engine.resources import EncoderLoader, Resources
from workers.engine.sink import Sink
from workers.engine.tokenize import Tokenize
from workers.heartbeat import Heartbeat
from workers.holdings import Holdings

log = logging.getLogger(__name__)

# Batches waiting for the device: enough to hide a slow tokenize or sink, few enough to bound memory.
FORWARD_QUEUE = 4
SINK_QUEUE = 8
# Long enough to finish the batches in flight; a dead stage must not hang a worker's shutdown.
CLOSE_TIMEOUT_S = 120
# Abandoning (Ctrl-C) waits only for the batch each stage has in hand.
ABANDON_TIMEOUT_S = 5


class EmbedEngine:
    """One per worker process: owns the encoders, two Postgres connections and a Milvus client."""

    def __init__(self, settings: FleetSettings, encoder_loader: EncoderLoader | None = None, name: str | None = None):
        self.settings = settings
        self.name = name
        self.resources = Resources(settings, encoder_loader)
        self.ledger = Ledger()
        self.holdings = Holdings()
        self.budget = Budget(settings.batch_tokens)
        self._requests: queue.Queue = queue.Queue()
        self._groups: queue.Queue = queue.Queue(maxsize=2)
        self._batches: queue.Queue = queue.Queue(maxsize=FORWARD_QUEUE)
        self._results: queue.Queue = queue.Queue(maxsize=SINK_QUEUE)
        self._abandoned = threading.Event()
        self._stopped_error = RuntimeError("the embed engine was stopped")
        self.claim = Claim(settings, self.resources, self.ledger, self._requests, self._device_starving)
        self.tokenize = Tokenize(
            settings, self.resources, self.budget, self._groups, self._device_starving, self._abandoned, self._abort
        )
        self.forward = Forward(self.resources, self.budget, self._abandoned, self._abort)
        self.sink = Sink(self.resources, self.ledger, self._results, self._abort)
        self.stages: list[Stage] = []
        self._heartbeat: Heartbeat | None = None
        # Called once when a stage dies (after the work in flight was failed): the Celery worker
        # shuts itself down so that its supervisor starts a fresh one.
        self.on_broken: Callable[[], None] = lambda: None

    @property
    def chunks_done(self) -> int:
        return self.sink.chunks_done

    @property
    def first_forward_at(self) -> float | None:
        return self.forward.first_forward_at

    @property
    def peak_memory_bytes(self) -> int:
        return self.forward.peak_memory_bytes

    def start(self) -> "EmbedEngine":
        if not self.stages:
            wiring = [
                ("claim", self._requests, self.claim, self._groups),
                ("tokenize", self._groups, self.tokenize, self._batches),
                ("forward", self._batches, self.forward, self._results),
                ("sink", self._results, self.sink, None),
            ]
            self.stages = [
                Stage(name, inbox, work, out, self._abort, self._stage_died) for name, inbox, work, out in wiring
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
        if self._heartbeat is not None and self._heartbeat.problem:
            return False, self._heartbeat.problem
        return True, f"ok: {self.ledger.chunks_held()} chunks held, {self.chunks_done} done"

    def check_healthy(self) -> None:
        dead = self._dead_stage()
        if dead:
            raise RuntimeError(f"the embed engine's {dead.name} stage stopped") from dead.error

    def preload(self, model: str, quantize: str = "none") -> None:
        self.resources.encoder(model, quantize)

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
            self.resources.close()
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _device_starving(self) -> bool:
        """No batch waits for the forward stage: whatever is tokenized next goes straight to it."""
        return self._batches.empty()

    def _dead_stage(self) -> Stage | None:
        return next((stage for stage in self.stages if stage.error is not None), None)

    def _stage_died(self, stage: Stage) -> None:
        """Fail everything in flight at once (Celery retries those tasks, on this worker's way out
        or on another worker) instead of leaving it until the next task arrives."""
        error = RuntimeError(f"the embed engine's {stage.name} stage stopped: {stage.error!r}")
        self._drop_queued(error)
        self.ledger.abort_all(error)
        self.on_broken()

    def _drop_queued(self, error: Exception) -> None:
        for inbox in (self._requests, self._groups, self._batches, self._results):
            while True:
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not STOP:
                    self._abort(item, error)

    def _abort(self, item: Any, error: Exception | None) -> None:
        """A stage could not handle `item` (`error` None: the engine is abandoning its work): its
        tasks fail (and retry). When a service was out, the attempt their claim counted is given
        back: an outage must not use up a chunk's attempts."""
        error = error or self._stopped_error
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
            progress.refund_attempts(self.resources.conn("claim"), version_id, chunk_ids)
        except Exception as err:  # Postgres is the one out: the attempt stays counted, once
            log.warning("could not give back the attempts of %d chunks: %s", len(chunk_ids), err)
