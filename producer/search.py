"""`producer search`: embed the query with the live index's model, search as an access level."""

from dataclasses import asdict, dataclass
from functools import lru_cache

import psycopg
from pymilvus import MilvusClient

from workers.access import AccessLevel
from workers.embedding import Encoder, load_encoder
from workers.embedding.base import fit_dimension
from workers.errors import InvalidInput
from workers.stores import milvus
from workers.stores.catalog import IndexVersion


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    document_id: int
    source_path: str
    access_level: str
    score: float
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=2)
def encoder_for(model: str, device: str) -> Encoder:
    """Query encoders stay loaded: a process that searches often (eval, a server) loads each once."""
    return load_encoder(model, device)


def search(
    conn: psycopg.Connection,
    client: MilvusClient,
    encoder: Encoder,
    version: IndexVersion,
    query: str,
    level: AccessLevel,
    top_k: int,
) -> list[SearchHit]:
    """The `top_k` chunks nearest to `query` among those visible at `level`, best first."""
    if not query.strip():
        raise InvalidInput("empty query: give the text to search for")
    if top_k < 1:
        raise InvalidInput(f"--top-k must be at least 1, not {top_k}")
    vector = fit_dimension(encoder.encode_queries([query]), version.dim)[0]
    hits = milvus.search(client, version.collection, vector, level, top_k)
    rows = _chunk_rows(conn, [hit.chunk_id for hit in hits])
    results = []
    for hit in hits:
        row = rows.get(hit.chunk_id)
        # Postgres is the truth: a vector whose chunk is gone, or now above the level, is not shown.
        if row is None or row[2] > level:
            continue
        document_id, source_path, chunk_level, text = row
        results.append(
            SearchHit(hit.chunk_id, document_id, source_path, AccessLevel(chunk_level).name, hit.score, text)
        )
    return results


def _chunk_rows(conn: psycopg.Connection, chunk_ids: list[str]) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT c.id, c.document_id, d.source_path, d.access_level, c.text"
        " FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
        (chunk_ids,),
    ).fetchall()
    return {row[0]: row[1:] for row in rows}
