"""The sink stage: vectors into Milvus in bulk, then the chunks marked embedded in Postgres.

Only then are the tasks whose chunks are all stored resolved (the ledger counts them down), so a
task is acknowledged after its chunks are in both stores, even when they were split across
batches. A chunk deleted by a re-ingest while it was embedded leaves no vector behind: its
deletion goes through the outbox in the same transaction as the marks.

An upsert that fails may have removed the rows it was replacing (Milvus Lite's upsert is a delete
then an insert: a crash between them keeps neither). When another delivery of the same chunks had
already stored and marked them, they would stay "embedded" with no vector; so a failed upsert's
chunks go back to pending, and this task's redelivery (or the reconciler) writes them again.
"""

import logging
import queue
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from workers import metrics
from workers.core import identifiers
from workers.core.failures import is_outage
from workers.core.stores import milvus, outbox, progress
from workers.core.stores.progress import PendingChunk
from workers.engine.ledger import Ledger
from workers.engine.messages import Embedded, Failed, chunk_ids_of
from workers.engine.pipeline import STOP, drain
from workers.engine.resources import Resources

log = logging.getLogger(__name__)

SINK_ROWS = 2048


class Sink:
    def __init__(
        self, resources: Resources, ledger: Ledger, inbox: queue.Queue, abort: Callable[[Any, Exception | None], None]
    ):
        self.resources = resources
        self.ledger = ledger
        self.inbox = inbox
        self.abort = abort
        self.chunks_done = 0

    def __call__(self, first: Embedded | Failed) -> None:
        items, stop_seen = drain(self.inbox, first, SINK_ROWS, lambda item: len(chunk_ids_of(item)[1]))
        try:
            for item in items:
                if isinstance(item, Failed):
                    metrics.FAILURES.labels(item.kind).inc(len(item.chunk_ids))
                    conn = self.resources.conn("sink")
                    progress.record_failure(conn, item.version.id, item.chunk_ids, item.kind, item.error)
                    self.ledger.failed(item.version.id, item.chunk_ids)
            self._store([item for item in items if isinstance(item, Embedded)])
        except Exception as err:
            if is_outage(err):
                self.resources.drop_vectors()
            for item in items:
                self.abort(item, err)
        if stop_seen:
            self.inbox.put(STOP)

    def _store(self, items: list[Embedded]) -> None:
        by_version: dict[int, list[Embedded]] = defaultdict(list)
        for item in items:
            by_version[item.version.id].append(item)
        for version_items in by_version.values():
            version = version_items[0].version
            keyword = version.analyzer is not None
            rows = [
                _row(chunk, vector, keyword)
                for item in version_items
                for chunk, vector in zip(item.chunks, item.vectors, strict=True)
            ]
            client = self.resources.collection(version)
            ids = [row.chunk_id for row in rows]
            try:
                with metrics.SINK_SECONDS.labels("milvus").time():
                    milvus.upsert(client, version.collection, rows, keyword)
            except Exception:
                self._back_to_pending(version.id, ids)
                raise
            conn = self.resources.conn("sink")
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

    def _back_to_pending(self, version_id: int, ids: list[str]) -> None:
        """After a failed upsert: chunks marked embedded meanwhile may have lost their rows."""
        try:
            with self.resources.conn("sink").transaction() as transaction:
                undone = progress.unmark_embedded(transaction.connection, version_id, ids)
        except Exception as err:  # Postgres away too: `migrate verify --repair` finds any such chunk
            log.warning("could not put the chunks of a failed Milvus write back to pending: %s", err)
            return
        if undone:
            log.warning(
                "%d chunks another delivery had stored go back to pending: a failed upsert may have "
                "removed their vectors",
                len(undone),
            )


def _row(chunk: PendingChunk, vector, keyword: bool) -> milvus.VectorRow:
    """The chunk's row; with keyword search, its text and identifiers too."""
    if not keyword:
        return milvus.VectorRow(chunk.id, chunk.document_id, chunk.access_level, vector)
    tokens = identifiers.for_chunk(chunk.text, chunk.source_path, chunk.head)
    return milvus.VectorRow(chunk.id, chunk.document_id, chunk.access_level, vector, chunk.text, tokens)
