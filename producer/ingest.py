"""`producer ingest`: walk, read, chunk, register in Postgres, enqueue what is new.

With a broker, tasks are sent as each document is registered so workers start at once; in
process (no broker), everything pending — this run's chunks and any left by an interrupted
run — is embedded before returning.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pymilvus import MilvusClient

from producer.chunking import ChunkLimits, chunk_text
from producer.dispatch import Dispatcher, InProcessDispatcher, make_tasks, send_pending
from producer.documents import Rejection, find_files, read_document
from producer.index import ensure_live_version
from producer.registry import register, remove_documents_except
from workers.access import AccessLevel
from workers.embedding.model_info import ModelInfo, resolve_model
from workers.embedding.tokenizer import load_token_counter
from workers.errors import InvalidInput
from workers.settings import FleetSettings
from workers.stores import catalog, milvus

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    files_seen: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    documents_rejected: int = 0
    documents_removed: int = 0
    chunks_enqueued: int = 0
    chunks_removed: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> None:
        if status == "new":
            self.documents_new += 1
        elif status == "changed":
            self.documents_changed += 1
        else:
            self.documents_unchanged += 1

    def to_dict(self) -> dict:
        fields = {key: value for key, value in vars(self).items() if key not in ("rejected", "warnings")}
        return {**fields, "rejected": [r.to_dict() for r in self.rejected], "warnings": self.warnings}


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
    if not root.is_dir():
        hint = (
            "give the folder that holds it: a document's identity is its path inside the folder, and "
            "unchanged files are skipped"
            if root.is_file()
            else "give a folder of .md, .markdown or .txt documents"
        )
        raise InvalidInput(f"{root} is not a folder: {hint}")
    report = IngestReport()
    live, mismatch = ensure_live_version(conn, client, settings, info)
    info = resolve_model(live.model)
    counter = load_token_counter(info)
    limits, too_short = chunk_limits(settings, info)
    for warning in (mismatch, too_short):
        if warning:
            log.warning(warning)
            report.warnings.append(warning)
    in_process = isinstance(dispatcher, InProcessDispatcher)
    seen: set[str] = set()
    for path in find_files(root):
        report.files_seen += 1
        document = read_document(path, root, default_level)
        seen.add(document.path if isinstance(document, Rejection) else document.source_path)
        if isinstance(document, Rejection):
            log.warning("refused %s: %s", document.path, document.reason)
            report.documents_rejected += 1
            report.rejected.append(document)
            continue
        chunks = chunk_text(document.body, counter, limits)
        registration = register(conn, document, chunks)
        report.count(registration.status)
        report.chunks_removed += len(registration.removed)
        delete_vectors(conn, client, registration.removed)
        if registration.added and not in_process:
            for version_id in registration.version_ids:
                dispatcher.send(make_tasks(version_id, registration.added, settings.task_chunks))
                report.chunks_enqueued += len(registration.added)
    if prune:
        paths, chunk_ids = remove_documents_except(conn, seen)
        delete_vectors(conn, client, chunk_ids)
        report.documents_removed, report.chunks_removed = len(paths), report.chunks_removed + len(chunk_ids)
        for path in paths:
            log.info("removed %s: no longer under %s", path, root)
    if in_process:
        for version in catalog.active_versions(conn):
            report.chunks_enqueued += send_pending(dispatcher, conn, version, settings.task_chunks)
    return report


def delete_vectors(conn: psycopg.Connection, client: MilvusClient, chunk_ids: list[str]) -> None:
    """Delete chunks' vectors from every kept collection (retired ones too: a rollback to one must
    not bring removed chunks back)."""
    if not chunk_ids:
        return
    for version in catalog.all_versions(conn):
        if client.has_collection(version.collection):
            milvus.delete(client, version.collection, chunk_ids)
