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

from producer.chunking import ChunkLimits
from producer.dispatch import Dispatcher, InProcessDispatcher, make_tasks, send_pending
from producer.documents import Rejection, Source, Unchanged
from producer.index import ensure_live_version
from producer.intake import Intake, Prepared
from producer.registry import documents_outside, fingerprints, register, remove_documents
from producer.walk import Walk
from workers.access import AccessLevel
from workers.embedding.model_info import ModelInfo, resolve_model
from workers.errors import InvalidInput
from workers.settings import FleetSettings
from workers.stores import catalog, milvus

log = logging.getLogger(__name__)


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
    chunks_removed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> None:
        if status == "new":
            self.documents_new += 1
        elif status == "changed":
            self.documents_changed += 1
        else:
            self.documents_unchanged += 1

    def to_dict(self) -> dict:
        lists = ("rejected", "skipped", "warnings")
        fields = {key: value for key, value in vars(self).items() if key not in lists}
        return {
            **fields,
            "rejected": [r.to_dict() for r in self.rejected],
            "skipped": [s.to_dict() for s in self.skipped],
            "warnings": self.warnings,
        }


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
    return ChunkLimits(min_tokens, max_tokens), warning


def ingest(
    root: Path,
    default_level: AccessLevel | None,
    settings: FleetSettings,
    conn: psycopg.Connection,
    client: MilvusClient,
    info: ModelInfo,
    dispatcher: Dispatcher,
    prune: bool = False,
) -> IngestReport:
    """Register what is new or changed under `root` and send it to be embedded; with `prune`, also
    remove the documents no longer under `root` (PATH must then be the whole corpus)."""
    _check_root(root)
    report = IngestReport()
    live, mismatch = ensure_live_version(conn, client, settings, info)
    info = resolve_model(live.model)
    limits, too_short = chunk_limits(settings, info)
    for warning in (mismatch, too_short):
        if warning:
            log.warning(warning)
            report.warnings.append(warning)
    known = fingerprints(conn)
    walk = Walk(root)
    sources = (
        Source(
            found.path,
            found.name,
            found.sidecar,
            found.inherited,
            default_level,
            settings.max_file_bytes,
            known.get(found.name),
        )
        for found in walk.documents()
    )
    seen: set[str] = set()
    in_process = isinstance(dispatcher, InProcessDispatcher)
    with Intake(settings.parse_workers, limits, info) as intake:
        for outcome in tqdm(intake.run(sources), desc="read", unit=" files", disable=None):
            report.files_seen += 1
            if isinstance(outcome, Prepared):
                seen.add(outcome.document.source_path)
                _store(outcome, report, conn, client, dispatcher, settings.task_chunks, send=not in_process)
            elif isinstance(outcome, Unchanged):
                seen.add(outcome.name)
                report.documents_unchanged += 1
            else:
                seen.add(outcome.path)
                report.rejected.append(outcome)
                if outcome.withdraw and outcome.path in known:
                    _withdraw(outcome.path, report, conn, client)
    report.rejected += walk.rejected
    report.skipped = walk.skipped
    report.documents_rejected, report.files_skipped = len(report.rejected), len(report.skipped)
    for rejection in report.rejected:
        log.debug("refused %s: %s", rejection.path, rejection.reason)
    if prune:
        _prune(documents_outside(conn, seen, walk.unreadable), report, conn, client, root)
    if in_process:
        for version in catalog.active_versions(conn):
            report.chunks_enqueued += send_pending(dispatcher, conn, version, settings.task_chunks)
    return report


def _check_root(root: Path) -> None:
    if root.is_dir():
        return
    if root.is_file():
        raise InvalidInput(
            f"{root} is a file, not a folder: give the folder that holds it (a document's identity is its path "
            "inside the folder, and unchanged files are skipped)"
        )
    raise InvalidInput(f"{root} does not exist: give the folder of documents to ingest")


def _store(
    prepared: Prepared,
    report: IngestReport,
    conn: psycopg.Connection,
    client: MilvusClient,
    dispatcher: Dispatcher,
    task_chunks: int,
    send: bool,
) -> None:
    registration = register(conn, prepared.document, prepared.chunks)
    report.count(registration.status)
    report.chunks_removed += len(registration.removed)
    delete_vectors(conn, client, registration.removed)
    if registration.added and send:
        for version_id in registration.version_ids:
            dispatcher.send(make_tasks(version_id, registration.added, task_chunks))
            report.chunks_enqueued += len(registration.added)


def _withdraw(path: str, report: IngestReport, conn: psycopg.Connection, client: MilvusClient) -> None:
    """Take out of the index a document whose level can no longer be read: never serve it at the old one."""
    chunk_ids = remove_documents(conn, [path])
    delete_vectors(conn, client, chunk_ids)
    report.documents_withdrawn += 1
    report.chunks_removed += len(chunk_ids)
    log.warning("withdrew %s from the index until its access level can be read again", path)


def _prune(paths: list[str], report: IngestReport, conn: psycopg.Connection, client: MilvusClient, root: Path) -> None:
    chunk_ids = remove_documents(conn, paths)
    delete_vectors(conn, client, chunk_ids)
    report.documents_removed, report.chunks_removed = len(paths), report.chunks_removed + len(chunk_ids)
    for path in paths:
        log.info("removed %s: no longer under %s", path, root)


def delete_vectors(conn: psycopg.Connection, client: MilvusClient, chunk_ids: list[str]) -> None:
    """Delete chunks' vectors from every kept collection (retired ones too: a rollback to one must
    not bring removed chunks back)."""
    if not chunk_ids:
        return
    for version in catalog.all_versions(conn):
        if client.has_collection(version.collection):
            milvus.delete(client, version.collection, chunk_ids)
