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
from workers.stores import catalog

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


def register(conn: psycopg.Connection, document: Document, chunks: list[Chunk]) -> Registration:
    """Store `document` and its chunks in one transaction; queue new chunks for each active version
    (live and building: the dual write of a re-index), read under the versions lock."""
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=False)
        version_ids = [version.id for version in catalog.active_versions(conn)]
        existing = conn.execute(
            "SELECT id, content_sha256, access_level FROM documents WHERE source_path = %s FOR UPDATE",
            (document.source_path,),
        ).fetchone()
        if existing and existing[1:] == (document.content_sha256, int(document.access_level)):
            return Registration("unchanged", existing[0], version_ids)
        document_id = _upsert_document(conn, document)
        wanted = {chunk_id(document, ordinal, chunk.text): (ordinal, chunk) for ordinal, chunk in enumerate(chunks)}
        present = {row[0] for row in conn.execute("SELECT id FROM chunks WHERE document_id = %s", (document_id,))}
        removed = sorted(present - wanted.keys())
        added = [cid for cid in wanted if cid not in present]
        # Cascades to chunk_embeddings and failures of the removed chunks.
        conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (removed,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO chunks (id, document_id, ordinal, text, token_count) VALUES (%s, %s, %s, %s, %s)",
                [(cid, document_id, wanted[cid][0], wanted[cid][1].text, wanted[cid][1].token_count) for cid in added],
            )
            cur.executemany(
                "INSERT INTO chunk_embeddings (index_version_id, chunk_id) VALUES (%s, %s)",
                [(version_id, cid) for version_id in version_ids for cid in added],
            )
        return Registration("changed" if existing else "new", document_id, version_ids, added, removed)


def _upsert_document(conn: psycopg.Connection, document: Document) -> int:
    (document_id,) = conn.execute(
        """
        INSERT INTO documents (source_path, content_sha256, access_level, metadata)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (source_path) DO UPDATE
        SET content_sha256 = EXCLUDED.content_sha256, access_level = EXCLUDED.access_level,
            metadata = EXCLUDED.metadata, updated_at = now()
        RETURNING id
        """,
        (document.source_path, document.content_sha256, int(document.access_level), Jsonb(document.metadata)),
    ).fetchone()
    return document_id


def remove_documents_except(conn: psycopg.Connection, keep: set[str]) -> tuple[list[str], list[str]]:
    """Delete the documents whose path is not in `keep`, with their chunks; returns (paths, chunk ids)."""
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=False)
        rows = conn.execute(
            "SELECT d.source_path, c.id FROM documents d LEFT JOIN chunks c ON c.document_id = d.id"
            " WHERE NOT (d.source_path = ANY(%s))",
            (sorted(keep),),
        ).fetchall()
        paths = sorted({path for path, _ in rows})
        conn.execute("DELETE FROM documents WHERE source_path = ANY(%s)", (paths,))
    return paths, [chunk_id for _, chunk_id in rows if chunk_id is not None]
