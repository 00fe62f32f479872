"""Write documents and their chunks to Postgres, and tell which chunks are new or gone.

Chunk ids are deterministic — a hash of the document's path and level, the chunk's position
and its text — so an unchanged chunk of a changed document keeps its id and its vectors.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import psycopg

from producer.chunking import Chunk
from producer.documents import Document
from workers.core.stores import catalog, outbox

Status = Literal["new", "changed", "unchanged"]


@dataclass(frozen=True)
class Registration:
    status: Status
    document_id: int
    version_ids: list[int]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def chunk_id(document: Document, ordinal: int, text: str) -> str:
    key = f"{document.source_path}\x00{int(document.access_level)}\x00{ordinal}\x00{text}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def register(conn: psycopg.Connection, document: Document, chunks: list[Chunk], ingest_root: str) -> Registration:
    """Store one document and its chunks (see `register_many`)."""
    return register_many(conn, [(document, chunks)], ingest_root)[0]


def register_many(
    conn: psycopg.Connection, documents: list[tuple[Document, list[Chunk]]], ingest_root: str
) -> list[Registration]:
    """Store documents (distinct paths) and their chunks in one transaction; queue new chunks for
    each active version (live and building: the dual write of a re-index), read under the
    versions lock. A batch costs a handful of statements whatever its size: one commit and one
    round of statements for many small documents instead of a dozen each.

    A document whose chunks are all there already is "unchanged" (a touched file, a new sidecar
    with the same level): only its record and the chunks' places are updated. The vectors of
    removed chunks go through the outbox, in the same transaction."""
    documents = sorted(documents, key=lambda item: item[0].source_path)  # locks in one order
    paths = [document.source_path for document, _ in documents]
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=False)
        version_ids = [version.id for version in catalog.active_versions(conn)]
        existing = {
            path
            for (path,) in conn.execute(
                "SELECT source_path FROM documents WHERE source_path = ANY(%s) ORDER BY source_path FOR UPDATE",
                (paths,),
            )
        }
        ids = _upsert_documents(conn, [document for document, _ in documents], ingest_root)
        present: dict[int, set[str]] = {document_id: set() for document_id in ids.values()}
        for document_id, cid in conn.execute(
            "SELECT document_id, id FROM chunks WHERE document_id = ANY(%s)", (list(ids.values()),)
        ):
            present[document_id].add(cid)
        registrations, new_rows, kept_rows = [], [], []
        for document, chunks in documents:
            document_id = ids[document.source_path]
            wanted = {chunk_id(document, ordinal, chunk.text): (ordinal, chunk) for ordinal, chunk in enumerate(chunks)}
            removed = sorted(present[document_id] - wanted.keys())
            added = [cid for cid in wanted if cid not in present[document_id]]
            new_rows += [(cid, document_id, *wanted[cid]) for cid in added]
            kept_rows += [(cid, wanted[cid][1]) for cid in present[document_id] & wanted.keys()]
            if removed:  # cascades to chunk_embeddings and failures of the removed chunks
                conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (removed,))
                outbox.add(conn, removed, f"chunks of {document.source_path} changed")
            status = "new" if document.source_path not in existing else "changed" if added or removed else "unchanged"
            registrations.append(Registration(status, document_id, version_ids, added, removed))
        _insert_chunks(conn, new_rows, version_ids)
        _update_places(conn, kept_rows)
    by_path = dict(zip(paths, registrations, strict=True))
    return [by_path[document.source_path] for document, _ in documents]


def _insert_chunks(conn: psycopg.Connection, rows: list[tuple[str, int, int, Chunk]], version_ids: list[int]) -> None:
    """New chunks, each pending for every active version: two statements, whatever their number."""
    if not rows:
        return
    ids = [cid for cid, *_ in rows]
    conn.execute(
        "INSERT INTO chunks (id, document_id, ordinal, text, token_count, page_start, page_end, section)"
        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::int[], %s::text[], %s::int[], %s::int[], %s::int[],"
        " %s::text[])",
        (
            ids,
            [document_id for _, document_id, _, _ in rows],
            [ordinal for _, _, ordinal, _ in rows],
            [chunk.text for *_, chunk in rows],
            [chunk.token_count for *_, chunk in rows],
            *map(list, zip(*(_place(chunk) for *_, chunk in rows), strict=True)),
        ),
    )
    conn.execute(
        "INSERT INTO chunk_embeddings (index_version_id, chunk_id)"
        " SELECT version_id, chunk_id FROM unnest(%s::int[]) AS version_id CROSS JOIN unnest(%s::text[]) AS chunk_id",
        (version_ids, ids),
    )


def _update_places(conn: psycopg.Connection, rows: list[tuple[str, Chunk]]) -> None:
    """A kept chunk may sit on another page or under another heading now: rewritten where it does."""
    if not rows:
        return
    starts, ends, sections = map(list, zip(*(_place(chunk) for _, chunk in rows), strict=True))
    conn.execute(
        "UPDATE chunks SET page_start = p.page_start, page_end = p.page_end, section = p.section"
        " FROM unnest(%s::text[], %s::int[], %s::int[], %s::text[]) AS p (id, page_start, page_end, section)"
        " WHERE chunks.id = p.id AND (chunks.page_start, chunks.page_end, chunks.section)"
        " IS DISTINCT FROM (p.page_start, p.page_end, p.section)",
        ([cid for cid, _ in rows], starts, ends, sections),
    )


def _place(chunk: Chunk) -> tuple[int | None, int | None, str | None]:
    return chunk.page_start, chunk.page_end, chunk.section


def _upsert_documents(conn: psycopg.Connection, documents: list[Document], ingest_root: str) -> dict[str, int]:
    """Insert or update the documents' records; their ids by path."""
    rows = conn.execute(
        """
        INSERT INTO documents
            (source_path, content_sha256, access_level, metadata, fingerprint, level_source, ingest_root)
        SELECT path, sha256, level, metadata::jsonb, fingerprint, level_source, %s
        FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::text[], %s::text[], %s::text[])
            AS d (path, sha256, level, metadata, fingerprint, level_source)
        ON CONFLICT (source_path) DO UPDATE
        SET content_sha256 = EXCLUDED.content_sha256, access_level = EXCLUDED.access_level,
            metadata = EXCLUDED.metadata, fingerprint = EXCLUDED.fingerprint,
            level_source = EXCLUDED.level_source, ingest_root = EXCLUDED.ingest_root, updated_at = now()
        RETURNING source_path, id
        """,
        (
            ingest_root,
            [document.source_path for document in documents],
            [document.content_sha256 for document in documents],
            [int(document.access_level) for document in documents],
            [json.dumps(document.metadata) for document in documents],
            [document.fingerprint for document in documents],
            [document.level_source for document in documents],
        ),
    ).fetchall()
    return dict(rows)


def fingerprints(conn: psycopg.Connection) -> dict[str, str | None]:
    """Every indexed document with its recorded fingerprint: a file that still has it is not read
    again. A document indexed before fingerprints were recorded is listed too (None: read again),
    so that it is withdrawn like any other when its level can no longer be read."""
    return dict(conn.execute("SELECT source_path, fingerprint FROM documents"))


def remove_documents(conn: psycopg.Connection, paths: list[str], reason: str) -> list[str]:
    """Delete these documents with their chunks (their vectors through the outbox, in the same
    transaction); returns the chunk ids removed."""
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=False)
        rows = conn.execute(
            "DELETE FROM chunks USING documents d WHERE chunks.document_id = d.id AND d.source_path = ANY(%s)"
            " RETURNING chunks.id",
            (paths,),
        ).fetchall()
        conn.execute("DELETE FROM documents WHERE source_path = ANY(%s)", (paths,))
        chunk_ids = [chunk_id for (chunk_id,) in rows]
        outbox.add(conn, chunk_ids, reason)
    return chunk_ids


def claim_root(conn: psycopg.Connection, paths: set[str], ingest_root: str) -> None:
    """Record that these (unchanged) documents were found under `ingest_root` in this run. Only
    those recorded under another root are written: a re-ingest of the same folder writes nothing."""
    conn.execute(
        "UPDATE documents SET ingest_root = %s WHERE source_path = ANY(%s) AND ingest_root IS DISTINCT FROM %s",
        (ingest_root, sorted(paths), ingest_root),
    )
