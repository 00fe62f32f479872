"""The embed engine: merges the chunks of many tasks into token-budget batches on one thread.

Tasks (from Celery's thread pool, or from the producer in-process) `submit` and wait on a
future. The engine thread takes every request waiting within `collect_ms`, claims their
pending chunks in Postgres, plans length-sorted batches, encodes, upserts into the version's
Milvus collection, marks the chunks embedded, and only then resolves the futures: a task is
acknowledged after its chunks are in both stores.
"""

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from workers.batching import plan_batches
from workers.contracts import EmbedResult, EmbedTask
from workers.embedding import Encoder, load_encoder
from workers.embedding.base import fit_dimension
from workers.errors import InvalidInput
from workers.settings import FleetSettings
from workers.stores import catalog, milvus, postgres, progress
from workers.stores.catalog import IndexVersion
from workers.stores.progress import PendingChunk

log = logging.getLogger(__name__)


@dataclass
class _Request:
    task: EmbedTask
    future: Future = field(default_factory=Future)


class EmbedEngine:
    """One per worker process: owns the encoders, a Postgres connection and a Milvus client."""

    def __init__(self, settings: FleetSettings, encoder_loader: Callable[[str, str], Encoder] = load_encoder):
        self.settings = settings
        self._load_encoder = encoder_loader
        self._encoders: dict[str, Encoder] = {}
        self._versions: dict[int, IndexVersion] = {}
        self._collections_ready: set[str] = set()
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._conn = None
        self._milvus = None
        self.error: BaseException | None = None

    # -- public -----------------------------------------------------------------------------

    def start(self) -> "EmbedEngine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="embed-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, task: EmbedTask) -> Future:
        """Queue a task; the future resolves to an EmbedResult once its chunks are in both stores."""
        if self.error is not None:
            raise RuntimeError("the embed engine stopped") from self.error
        request = _Request(task)
        self._requests.put(request)
        self.start()
        return request.future

    def preload(self, model: str) -> None:
        self._encoder(model)

    def close(self) -> None:
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    # -- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                requests = self._collect()
                if requests is None:
                    return
                self._serve(requests)
        except BaseException as err:  # keep the cause: submit() refuses work from now on
            log.exception("embed engine stopped")
            self.error = err
            self._fail_waiting(err)

    def _collect(self) -> list[_Request] | None:
        """The next request, plus those arriving within collect_ms, up to a few batches' worth."""
        first = self._requests.get()
        if first is None:
            return None
        requests = [first]
        deadline = time.monotonic() + self.settings.collect_ms / 1000
        wanted_chunks = 4 * self.settings.worker_concurrency * self.settings.task_chunks
        while sum(len(request.task.chunk_ids) for request in requests) < wanted_chunks:
            try:
                more = self._requests.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if more is None:
                self._requests.put(None)  # stop after serving what was collected
                break
            requests.append(more)
        return requests

    def _serve(self, requests: list[_Request]) -> None:
        by_version: dict[int, list[_Request]] = defaultdict(list)
        for request in requests:
            by_version[request.task.index_version].append(request)
        for version_id, group in by_version.items():
            try:
                results = self._embed_version(version_id, [request.task for request in group])
            except Exception as err:  # the tasks retry: nothing was marked done
                for request in group:
                    request.future.set_exception(err)
                continue
            for request, result in zip(group, results, strict=True):
                request.future.set_result(result)

    def _fail_waiting(self, err: BaseException) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.future.set_exception(err)

    # -- one version's work -----------------------------------------------------------------

    def _embed_version(self, version_id: int, tasks: list[EmbedTask]) -> list[EmbedResult]:
        version = self._version(version_id)
        wanted = list(dict.fromkeys(chunk_id for task in tasks for chunk_id in task.chunk_ids))
        claimed = progress.claim(self._db(), version_id, wanted)
        chunks, failed = self._drop_hopeless(version, claimed)
        embedded = self._embed_and_store(version, chunks)
        return [self._result(task, embedded, failed) for task in tasks]

    def _drop_hopeless(self, version: IndexVersion, claimed: list[PendingChunk]) -> tuple[list[PendingChunk], set]:
        """Record as failed the chunks delivered too often or too long for a batch; keep the rest."""
        budget = self.settings.batch_tokens
        too_often = [c.id for c in claimed if c.attempts > self.settings.max_attempts]
        too_long = [c.id for c in claimed if c.token_count > budget and c.id not in too_often]
        if too_often:
            progress.record_failure(
                self._db(),
                version.id,
                too_often,
                "attempts",
                f"gave up after {self.settings.max_attempts} attempts (the worker died or failed each time)",
            )
        if too_long:
            progress.record_failure(
                self._db(),
                version.id,
                too_long,
                "too_long",
                f"longer than FLEET_BATCH_TOKENS={budget}: raise it to embed these chunks",
            )
        failed = set(too_often) | set(too_long)
        return [c for c in claimed if c.id not in failed], failed

    def _embed_and_store(self, version: IndexVersion, chunks: list[PendingChunk]) -> set[str]:
        if not chunks:
            return set()
        encoder = self._encoder(version.model)
        rows: list[milvus.VectorRow] = []
        for batch in plan_batches([c.token_count for c in chunks], self.settings.batch_tokens):
            members = [chunks[i] for i in batch]
            vectors = fit_dimension(encoder.encode_documents([c.text for c in members]), version.dim)
            rows += [
                milvus.VectorRow(c.id, c.document_id, c.access_level, vector)
                for c, vector in zip(members, vectors, strict=True)
            ]
        return self._store(version, rows)

    def _store(self, version: IndexVersion, rows: list[milvus.VectorRow]) -> set[str]:
        client = self._vectors()
        if version.collection not in self._collections_ready:
            milvus.ensure_collection(client, version.collection, version.dim)
            self._collections_ready.add(version.collection)
        milvus.upsert(client, version.collection, rows)
        ids = [row.chunk_id for row in rows]
        marked = progress.mark_embedded(self._db(), version.id, ids)
        # A chunk deleted by a re-ingest while we embedded it: its vector must not stay behind.
        orphans = [chunk_id for chunk_id in ids if chunk_id not in marked]
        if orphans:
            milvus.delete(client, version.collection, orphans)
        return marked

    @staticmethod
    def _result(task: EmbedTask, embedded: set[str], failed: set[str]) -> EmbedResult:
        done = sum(1 for chunk_id in task.chunk_ids if chunk_id in embedded)
        lost = sum(1 for chunk_id in task.chunk_ids if chunk_id in failed)
        return EmbedResult(embedded=done, failed=lost, skipped=len(task.chunk_ids) - done - lost)

    # -- resources, opened on the engine thread ---------------------------------------------

    def _db(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = postgres.connect(self.settings)
        return self._conn

    def _vectors(self):
        if self._milvus is None:
            self._milvus = milvus.connect(self.settings)
        return self._milvus

    def _version(self, version_id: int) -> IndexVersion:
        if version_id not in self._versions:
            version = catalog.get_version(self._db(), version_id)
            if version is None:
                raise InvalidInput(f"index version {version_id} does not exist")
            self._versions[version_id] = version
        return self._versions[version_id]

    def _encoder(self, model: str) -> Encoder:
        if model not in self._encoders:
            encoder = self._load_encoder(model, self.settings.device)
            self._encoders[model] = encoder
        return self._encoders[model]
