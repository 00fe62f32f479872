"""`producer ingest`: walk, read (in parser processes), chunk, register in Postgres, enqueue.

With a broker, tasks are sent as each document is registered so workers start at once; in
process (no broker), everything pending — this run's chunks and any left by an interrupted
run — is embedded before returning. A bad file is refused with its reason and the run goes on.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pymilvus import MilvusClient
from tqdm import tqdm

from producer import roots
from producer.chunking import Chunk, ChunkLimits
from producer.dispatch import Dispatcher, InProcessDispatcher, send_pending
from producer.documents import Document, Rejection, Source, Unchanged, printable
from producer.index import ensure_live_collection, live_version_for
from producer.intake import Bounds, Intake, Prepared
from producer.registry import claim_root, fingerprints, register_many, remove_documents
from producer.walk import Walk
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, outbox
from workers.embedding.model_info import ModelInfo, resolve_model

log = logging.getLogger(__name__)

# Documents registered in one transaction: at most this many, or this many chunks between them.
REGISTER_DOCUMENTS = 64
REGISTER_CHUNKS = 2000


@dataclass
class IngestReport:
    files_seen: int = 0
    files_skipped: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    documents_rejected: int = 0
    documents_removed: int = 0
    documents_withdrawn: int = 0
    chunks_enqueued: int = 0
    chunks_unsent: int = 0
    chunks_removed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[Rejection] = field(default_factory=list)
    withdrawn: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> None:
        if status == "new":
            self.documents_new += 1
        elif status == "changed":
            self.documents_changed += 1
        else:
            self.documents_unchanged += 1

    def to_dict(self) -> dict:
        lists = ("rejected", "skipped", "withdrawn", "warnings")
        fields = {key: value for key, value in vars(self).items() if key not in lists}
        return {
            **fields,
            "rejected": [r.to_dict() for r in self.rejected],
            "skipped": [s.to_dict() for s in self.skipped],
            "withdrawn": [w.to_dict() for w in self.withdrawn],
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        """The text output: a summary, then a line per skipped, refused and withdrawn file. Names
        and reasons are escaped (`to_dict`), so that no file name can forge a line of its own."""
        withdrawn = f", {self.documents_withdrawn} withdrawn" if self.documents_withdrawn else ""
        lines = [
            f"{self.files_seen} files: {self.documents_new} new, {self.documents_changed} changed, "
            f"{self.documents_unchanged} unchanged, {self.documents_rejected} refused, "
            f"{self.documents_removed} removed{withdrawn}, {self.files_skipped} skipped; "
            f"{self.chunks_enqueued} chunks to embed, {self.chunks_removed} removed"
        ]
        for what, listed in (("skipped", self.skipped), ("refused", self.rejected), ("withdrew", self.withdrawn)):
            lines += [f"{what} {shown['path']}: {shown['reason']}" for shown in map(Rejection.to_dict, listed)]
        return lines


def chunk_limits(settings: FleetSettings, info: ModelInfo) -> tuple[ChunkLimits, str | None]:
    """The configured bounds, shrunk to the model's sequence limit (with a warning) when it reads less."""
    max_tokens = min(settings.chunk_max_tokens, info.max_seq_length)
    min_tokens = min(settings.chunk_min_tokens, max_tokens // 2)
    warning = None
    if info.max_seq_length < settings.chunk_max_tokens:
        warning = (
            f"model {info.name} reads at most {info.max_seq_length} tokens: chunks are limited to "
            f"{max_tokens} tokens instead of {settings.chunk_max_tokens}"
        )
    return ChunkLimits(min_tokens, max_tokens, settings.chunk_max_chars), warning


def ingest(
    folder: Path,
    default_level: AccessLevel | None,
    settings: FleetSettings,
    conn: psycopg.Connection,
    client: MilvusClient | milvus.LazyClient,
    info: ModelInfo,
    dispatcher: Dispatcher,
    prune: bool = False,
) -> IngestReport:
    """Register what is new or changed under `folder` and send it to be embedded; with `prune`,
    also remove the documents under `folder` that are no longer there."""
    _check_root(folder)
    report = IngestReport()
    live, mismatch = live_version_for(conn, settings, info)
    if isinstance(client, milvus.LazyClient):  # the collection is made sure of once Milvus is needed
        client.prepare = lambda opened: ensure_live_collection(opened, live)
    else:
        ensure_live_collection(client, live)
    info = resolve_model(live.model)
    limits, too_short = chunk_limits(settings, info)
    for warning in (mismatch, too_short):
        if warning:
            _warn(report, warning)
    root = roots.resolve(conn, folder)
    if root.prefix:
        log.info("%s is inside %s, ingested before: its documents are %s...", folder, root.base, root.prefix)
    roots.record(conn, root)
    vectors = _Vectors(conn, client)
    vectors.delete_pending()  # what an earlier run could not delete (Milvus was out)
    known = fingerprints(conn)
    walk = Walk(root.path, root.prefix, root.base)
    sources = (
        Source(
            found.path,
            found.name,
            found.places,
            default_level,
            settings.max_file_bytes,
            known.get(found.name),
            (found.device, found.inode),
        )
        for found in walk.documents()
    )
    seen: set[str] = set()
    in_process = isinstance(dispatcher, InProcessDispatcher)
    bounds = Bounds(settings.parse_memory_mb, settings.parse_timeout_s)
    batch = _Batch(root, report, conn, vectors, dispatcher, send=not in_process)
    with Intake(settings.parse_workers, limits, info, bounds=bounds) as intake:
        for outcome in tqdm(intake.run(sources), desc="read", unit=" files", disable=None):
            report.files_seen += 1
            if isinstance(outcome, Prepared):
                seen.add(outcome.document.source_path)
                batch.add(outcome)
            elif isinstance(outcome, Unchanged):
                seen.add(outcome.name)
                report.documents_unchanged += 1
            else:
                seen.add(outcome.path)
                report.rejected.append(outcome)
        batch.store()
    claim_root(conn, seen, root.key)
    report.rejected += walk.rejected
    for rejection in report.rejected:  # fail closed: an indexed version of a refused file is taken out
        if rejection.withdraw and rejection.path in known:
            _withdraw(rejection.path, f"refused: {rejection.reason}", report, conn, vectors)
    for alias in walk.aliases:  # indexed under a link's path by an older version: now under its real path
        if alias in known and alias not in seen:
            _withdraw(alias, "a link: the document is indexed under its real path", report, conn, vectors)
    report.skipped = walk.skipped
    report.documents_rejected, report.files_skipped = len(report.rejected), len(report.skipped)
    for rejection in report.rejected:
        log.debug("refused %s: %s", printable(rejection.path), printable(rejection.reason))
    if prune:
        _prune(roots.prunable(conn, root, seen, walk.unreadable), report, conn, vectors, folder)
    if in_process:
        for version in catalog.active_versions(conn):
            report.chunks_enqueued += send_pending(dispatcher, conn, version)
    report.chunks_unsent = dispatcher.unsent
    if dispatcher.unsent:
        _warn(
            report,
            f"{dispatcher.unsent} chunks could not be sent (the broker is out): they stay pending, and "
            "the workers' reconciler sends them once it is back",
        )
    if not vectors.confirmed:
        _warn(
            report,
            "Milvus is out: vectors of removed chunks are deleted once it is back (the workers' "
            "reconciler, or the next ingest)",
        )
    return report


def _warn(report: IngestReport, warning: str) -> None:
    log.warning(warning)
    report.warnings.append(warning)


class _Vectors:
    """Deletes through the outbox: at once while Milvus answers, left for later once it does not."""

    def __init__(self, conn: psycopg.Connection, client: MilvusClient):
        self.conn = conn
        self.client = client
        self.confirmed = True

    def delete_pending(self) -> None:
        if self.confirmed:
            self.confirmed = outbox.apply_if_possible(self.conn, self.client)


def _check_root(root: Path) -> None:
    if root.is_dir():
        return
    if root.is_file():
        raise InvalidInput(
            f"{root} is a file, not a folder: give the folder that holds it (a document's identity is its path "
            "inside the folder, and unchanged files are skipped)"
        )
    raise InvalidInput(f"{root} does not exist: give the folder of documents to ingest")


class _Batch:
    """Documents read, registered together once there are enough (one transaction per batch:
    per-document commits and round trips were most of an ingest's time), then sent."""

    def __init__(
        self,
        root: roots.IngestRoot,
        report: IngestReport,
        conn: psycopg.Connection,
        vectors: _Vectors,
        dispatcher: Dispatcher,
        send: bool,
    ):
        self.root, self.report, self.conn, self.vectors = root, report, conn, vectors
        self.dispatcher, self.send = dispatcher, send
        self.documents: list[tuple[Document, list[Chunk]]] = []
        self.chunks = 0

    def add(self, prepared: Prepared) -> None:
        self.documents.append((prepared.document, prepared.chunks))
        self.chunks += len(prepared.chunks)
        if len(self.documents) >= REGISTER_DOCUMENTS or self.chunks >= REGISTER_CHUNKS:
            self.store()

    def store(self) -> None:
        if not self.documents:
            return
        registrations = register_many(self.conn, self.documents, self.root.key)
        self.documents, self.chunks = [], 0
        added: dict[int, list[str]] = {}
        for registration in registrations:
            self.report.count(registration.status)
            self.report.chunks_removed += len(registration.removed)
            for version_id in registration.version_ids:
                added.setdefault(version_id, []).extend(registration.added)
        if any(registration.removed for registration in registrations):
            self.vectors.delete_pending()
        if self.send:
            for version_id, chunk_ids in added.items():
                if chunk_ids:
                    self.report.chunks_enqueued += self.dispatcher.send(self.conn, version_id, chunk_ids)


def _withdraw(path: str, reason: str, report: IngestReport, conn: psycopg.Connection, vectors: _Vectors) -> None:
    """Take an indexed document out of the index: what can no longer be read is never served at
    the level it had (it comes back once a run reads it again)."""
    report.chunks_removed += len(remove_documents(conn, [path], f"{path} withdrawn: {reason}"))
    vectors.delete_pending()
    report.documents_withdrawn += 1
    report.withdrawn.append(Rejection(path, reason))
    log.warning("withdrew %s from the index: %s", printable(path), printable(reason))


def _prune(paths: list[str], report: IngestReport, conn: psycopg.Connection, vectors: _Vectors, folder: Path) -> None:
    chunk_ids = remove_documents(conn, paths, f"pruned: no longer under {folder}")
    vectors.delete_pending()
    report.documents_removed, report.chunks_removed = len(paths), report.chunks_removed + len(chunk_ids)
    for path in paths:
        log.info("removed %s: no longer under %s", path, folder)
