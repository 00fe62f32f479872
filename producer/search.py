"""`producer search`: search the live index as an access level, in one of three modes.

`dense`: the query embedded with the index's model (and its query prompt) and fitted to its
dimension; `keyword`: BM25 on the chunk text, which needs no model; `hybrid`: both, fused by rank
in Milvus. In the two latter the identifiers a query holds (`45/2019/NĐ-CP`) are also matched
whole (workers/core/identifiers.py). The query is NFC-normalised before all of it, as the
chunks were at ingest. Postgres, the truth, checks every hit's level once more.
"""

import math
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import psycopg
from pymilvus import MilvusClient

from workers.core.access import AccessLevel
from workers.core.constants import HYBRID, KEYWORD, MAX_TOP_K, SEARCH_MODES
from workers.core.errors import InvalidInput
from workers.core.identifiers import query_identifiers
from workers.core.stores import milvus
from workers.core.stores.catalog import IndexVersion
from workers.core.stores.milvus import Weights
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
    encoder: Encoder | None,
    version: IndexVersion,
    query: str,
    level: AccessLevel,
    top_k: int,
    mode: str,
    weights: Weights | None = None,
) -> list[SearchHit]:
    """The `top_k` best chunks for `query` among those visible at `level`, in `mode` (already
    resolved for `version`); `encoder` may be None in the keyword mode."""
    check_query(query)
    _check_top_k(top_k)
    text = normalized(query)
    vector = None if mode == KEYWORD else query_vector(encoder, version, text)
    return search_queries(conn, client, version, [make_query(text, vector)], level, top_k, mode, weights)[0]


def resolve_mode(version: IndexVersion, mode: str | None) -> str:
    """`mode`, or `version`'s default (hybrid where its collection holds the text, else dense);
    refused with what to do when its collection cannot answer it."""
    if mode is None:
        return version.default_mode
    if mode not in SEARCH_MODES:
        raise InvalidInput(f"unknown search mode {mode!r}: use {', '.join(SEARCH_MODES)}")
    if mode not in version.modes:
        raise InvalidInput(
            f"{version.collection} was built without the chunk text and answers only dense searches: "
            "`migrate reindex --same-model` adds keyword and hybrid search from its vectors, without re-embedding"
        )
    return mode


def check_weights(mode: str, weights: Weights | None) -> None:
    if weights is None:
        return
    if mode != HYBRID:
        raise InvalidInput(f"weights apply to hybrid searches; this one is {mode}")
    values = (weights.dense, weights.keyword)
    if not all(math.isfinite(value) and value >= 0 for value in values) or not sum(values):
        raise InvalidInput(f"weights must be finite, at least 0, and not both 0: not {values}")


def parse_weights(text: str) -> Weights:
    """`0.7,0.3` -> dense 0.7, keyword 0.3."""
    try:
        dense, keyword = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput(f"weights are two numbers, DENSE,KEYWORD (e.g. 0.7,0.3): not {text!r}") from None
    weights = Weights(dense, keyword)
    check_weights(HYBRID, weights)
    return weights


def normalized(query: str) -> str:
    """NFC, as every chunk's text is: Vietnamese typed with combining marks finds the same words."""
    return unicodedata.normalize("NFC", query)


def make_query(text: str, vector: np.ndarray | None) -> milvus.Query:
    """The search of an NFC `text` (and its vector, unless keyword only)."""
    return milvus.Query(text, vector, " ".join(query_identifiers(text)))


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


def search_queries(
    conn: psycopg.Connection,
    client: MilvusClient,
    version: IndexVersion,
    queries: list[milvus.Query],
    level: AccessLevel,
    top_k: int,
    mode: str,
    weights: Weights | None = None,
    timeout: float | None = None,
) -> list[list[SearchHit]]:
    """For each query (vectors already in `version`'s space), its `top_k` chunks visible at `level`.

    One Milvus search per kind of request and one Postgres query for all of them: the query
    service batches the searches of concurrent requests through here.
    """
    _check_top_k(top_k)
    found = milvus.search_many(client, version.collection, queries, level, top_k, mode, weights, timeout)
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
