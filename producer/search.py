"""`producer search`: embed the query with the live index's model, search as an access level."""

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import psycopg
from pymilvus import MilvusClient

from workers.core.access import AccessLevel
from workers.core.constants import MAX_TOP_K
from workers.core.errors import InvalidInput
from workers.core.stores import milvus
from workers.core.stores.catalog import IndexVersion
from workers.embedding import Encoder, load_encoder
from workers.embedding.base import fit_dimension


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    document_id: int
    source_path: str
    access_level: str
    score: float
    text: str
    page_start: int | None = None  # 1-based pages of a PDF where the chunk starts and ends
    page_end: int | None = None
    section: str | None = None  # the heading path where it starts: "Leave policy > Annual leave"

    def to_dict(self) -> dict:
        return asdict(self)

    def citation(self) -> str:
        """Where the hit is, for people: `handbook.pdf p. 12–13 § Leave policy > Annual leave`."""
        parts = [self.source_path]
        if self.page_start is not None:
            same = self.page_end in (None, self.page_start)
            parts.append(f"p. {self.page_start}" if same else f"p. {self.page_start}–{self.page_end}")
        if self.section:
            parts.append(f"§ {self.section}")
        return " ".join(parts)


@lru_cache(maxsize=2)
def encoder_for(model: str, device: str, quantize: str = "none") -> Encoder:
    """Query encoders stay loaded: a process that searches often (eval, a server) loads each once.
    `quantize` is the index version's: its queries run the model as its documents did."""
    return load_encoder(model, device, quantize=quantize)


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
    check_query(query)
    _check_top_k(top_k)
    return search_vectors(conn, client, version, [query_vector(encoder, version, query)], level, top_k)[0]


def check_query(query: str) -> None:
    if not query.strip():
        raise InvalidInput("empty query: give the text to search for")
    check_text(query, "the query")


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode: a lone surrogate (JSON's "\\ud800", or argv bytes that
    were not UTF-8) would fail deep in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInput(
            f"{what} holds {text[err.start]!r} at character {err.start}, which is not valid Unicode: send UTF-8 text"
        ) from None


def _check_top_k(top_k: int) -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}, not {top_k}")


def query_vector(encoder: Encoder, version: IndexVersion, query: str) -> np.ndarray:
    """The query's vector in `version`'s space: its model (with its query prompt), its dimension."""
    return fit_dimension(encoder.encode_queries([query]), version.dim)[0]


def search_vectors(
    conn: psycopg.Connection,
    client: MilvusClient,
    version: IndexVersion,
    vectors: list[np.ndarray],
    level: AccessLevel,
    top_k: int,
    timeout: float | None = None,
) -> list[list[SearchHit]]:
    """For each query vector (already in `version`'s space), its `top_k` chunks visible at `level`.

    One Milvus request and one Postgres query for all of them: the query service batches the
    searches of concurrent requests through here.
    """
    _check_top_k(top_k)
    found = milvus.search_many(client, version.collection, vectors, level, top_k, timeout)
    rows = _chunk_rows(conn, list({hit.chunk_id for per_query in found for hit in per_query}))
    return [_cited(per_query, rows, level) for per_query in found]


def _cited(hits: list[milvus.Hit], rows: dict[str, tuple], level: AccessLevel) -> list[SearchHit]:
    results = []
    for hit in hits:
        chunk_id, score = hit.chunk_id, hit.score
        row = rows.get(chunk_id)
        # Postgres is the truth: a vector whose chunk is gone, or now above the level, is not shown.
        if row is None or row[2] > level:
            continue
        document_id, source_path, chunk_level, text, page_start, page_end, section = row
        results.append(
            SearchHit(
                chunk_id,
                document_id,
                source_path,
                AccessLevel(chunk_level).name,
                score,
                text,
                page_start,
                page_end,
                section,
            )
        )
    return results


def _chunk_rows(conn: psycopg.Connection, chunk_ids: list[str]) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT c.id, c.document_id, d.source_path, d.access_level, c.text, c.page_start, c.page_end, c.section"
        " FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
        (chunk_ids,),
    ).fetchall()
    return {row[0]: row[1:] for row in rows}
