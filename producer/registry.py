"""Write documents and their chunks to Postgres, and tell which chunks are new or gone.

Chunk ids are deterministic — a hash of the document's path and level, the chunk's position
and its text — so an unchanged chunk of a changed document keeps its id and its vectors.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg.types.json import Jsonb

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
    """Store `document` and its chunks in one transaction; queue new chunks for each active version
    (live and building: the dual write of a re-index), read under the versions lock.

    A document whose chunks are all there already is "unchanged" (a touched file, a new sidecar
    with the same level): only its record and the chunks' places are updated. The vectors of
    removed chunks go through the outbox, in the same transaction."""
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=False)
        version_ids = [version.id for version in catalog.active_versions(conn)]
        existing = conn.execute(
            "SELECT id FROM documents WHERE source_path = %s FOR UPDATE", (document.source_path,)
        ).fetchone()
        document_id = _upsert_document(conn, document, ingest_root)
        wanted = {chunk_id(document, ordinal, chunk.text): (ordinal, chunk) for ordinal, chunk in enumerate(chunks)}
        present = {row[0] for row in conn.execute("SELECT id FROM chunks WHERE document_id = %s", (document_id,))}
        removed = sorted(present - wanted.keys())
        added = [cid for cid in wanted if cid not in present]
        # Cascades to chunk_embeddings and failures of the removed chunks.
        conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (removed,))
        outbox.add(conn, removed, f"chunks of {document.source_path} changed")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO chunks (id, document_id, ordinal, text, token_count, page_start, page_end, section)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        cid,
                        document_id,
                        wanted[cid][0],
                        wanted[cid][1].text,
                        wanted[cid][1].token_count,
                        *_place(wanted[cid][1]),
                    )
                    for cid in added
                ],
            )
            # A kept chunk may sit on another page or under another heading now.
            cur.executemany(
                "UPDATE chunks SET page_start = %s, page_end = %s, section = %s WHERE id = %s",
                [(*_place(wanted[cid][1]), cid) for cid in present & wanted.keys()],
            )
            cur.executemany(
                "INSERT INTO chunk_embeddings (index_version_id, chunk_id) VALUES (%s, %s)",
                [(version_id, cid) for version_id in version_ids for cid in added],
            )
        status = "new" if not existing else "changed" if added or removed else "unchanged"
        return Registration(status, document_id, version_ids, added, removed)


def _place(chunk: Chunk) -> tuple[int | None, int | None, str | None]:
    return chunk.page_start, chunk.page_end, chunk.section


def _upsert_document(conn: psycopg.Connection, document: Document, ingest_root: str) -> int:
    (document_id,) = conn.execute(
        """
        INSERT INTO documents
            (source_path, content_sha256, access_level, metadata, fingerprint, level_source, ingest_root)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (source_path) DO UPDATE
        SET content_sha256 = EXCLUDED.content_sha256, access_level = EXCLUDED.access_level,
            metadata = EXCLUDED.metadata, fingerprint = EXCLUDED.fingerprint,
            level_source = EXCLUDED.level_source, ingest_root = EXCLUDED.ingest_root, updated_at = now()
        RETURNING id
        """,
        (
            document.source_path,
            document.content_sha256,
            int(document.access_level),
            Jsonb(document.metadata),
            document.fingerprint,
            document.level_source,
            ingest_root,
        ),
    ).fetchone()
    return document_id


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
    """Record that these (unchanged) documents were found under `ingest_root` in this run."""
    conn.execute("UPDATE documents SET ingest_root = %s WHERE source_path = ANY(%s)", (ingest_root, sorted(paths)))
