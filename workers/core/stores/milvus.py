"""Milvus: one collection per index version, the alias `chunks` on the live one.

Rows are keyed by our deterministic chunk id (auto_id off: milvus#50355 re-inserts upserts
under new keys otherwise), so a task delivered twice writes the same rows.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pymilvus import AnnSearchRequest, DataType, Function, FunctionType, MilvusClient, MilvusException, RRFRanker
from pymilvus import WeightedRanker as MilvusWeightedRanker

from workers.core.access import AccessLevel
from workers.core.constants import DENSE, KEYWORD, LIVE_ALIAS, MILVUS_UPSERT_ROWS, RRF_K
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)

CHUNK_ID_MAX_LENGTH = 64
RECONNECT_PAUSE_S = 1.0
# Milvus's largest VARCHAR, in bytes. A chunk is at most 8,000 characters (producer/chunking.py),
# so its text fits; the cut only guards the field.
TEXT_MAX_BYTES = 65_535
# The identifier tokens (workers/core/identifiers.py) are joined by `_`, which the standard
# analyser keeps inside a token, whatever analyser the text has.
IDENTIFIER_ANALYZER = "standard"
# Each sub-request of a fused search ranks this many candidates (or twice top_k, if more).
FUSION_CANDIDATES = 50
MAX_CANDIDATES = 16_384
# One upsert request stays well under Milvus's 64 MB RPC cap: a text counts 4 bytes a character.
UPSERT_BYTES = 16 * 2**20


@dataclass(frozen=True)
class VectorRow:
    chunk_id: str
    document_id: int
    access_level: int
    vector: np.ndarray
    # For a collection with keyword search: the chunk's text (Milvus computes its BM25 vector) and
    # its identifier tokens (identifiers.for_chunk).
    text: str | None = None
    identifiers: str = ""


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    score: float
    access_level: int  # as stored with the vector in Milvus


@dataclass(frozen=True)
class Query:
    """One search: its text (BM25, NFC), its vector (dense), its identifier tokens."""

    text: str = ""
    vector: np.ndarray | None = None
    identifiers: str = ""


@dataclass(frozen=True)
class Weights:
    """Weights of the dense and the keyword ranking in a hybrid search (instead of RRF)."""

    dense: float
    keyword: float


class LazyClient:
    """A Milvus client opened on first use, then `prepare`d: a run that writes nothing (an unchanged
    re-ingest) never starts Milvus Lite, which costs seconds of the embedded default's run."""

    def __init__(self, settings: FleetSettings):
        self.settings = settings
        self.prepare: Callable[[MilvusClient], None] | None = None
        self._client: MilvusClient | None = None

    @property
    def opened(self) -> bool:
        return self._client is not None

    def __getattr__(self, name: str):
        if self._client is None:
            client = connect(self.settings)
            if self.prepare is not None:
                self.prepare(client)
            self._client = client
        return getattr(self._client, name)


def connect(settings: FleetSettings) -> MilvusClient:
    """A client for FLEET_MILVUS_URI, or for the Milvus Lite file under the data dir."""
    uri = settings.milvus_uri or str(settings.embedded_milvus_path.resolve())
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    try:
        try:
            return MilvusClient(uri=uri, token=token, timeout=settings.milvus_timeout_s)
        except MilvusException:
            # pymilvus shares one channel per server; after a long idle, Milvus Lite answers its
            # keepalive pings with GOAWAY ("too many pings") and the first reconnect can fail.
            time.sleep(RECONNECT_PAUSE_S)
            return MilvusClient(uri=uri, token=token, timeout=settings.milvus_timeout_s)
    except MilvusException as err:
        hint = (
            "another process may hold the Milvus Lite file: run `python -m milvus_lite server` and set FLEET_MILVUS_URI"
            if not settings.milvus_uri
            else "check FLEET_MILVUS_URI and that the server is up"
        )
        raise ServiceUnavailable(f"cannot open Milvus at {uri} ({err.message}); {hint}") from err


def ensure_collection(client: MilvusClient, name: str, dim: int, analyzer: str | None = None) -> None:
    """Create the collection of an index version if it does not exist yet; with an `analyzer`,
    it also holds the chunk text and identifiers, each with a BM25 vector Milvus computes."""
    if client.has_collection(name):
        return
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=CHUNK_ID_MAX_LENGTH)
    schema.add_field("document_id", DataType.INT64)
    schema.add_field("access_level", DataType.INT8)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="AUTOINDEX", metric_type="IP")
    index.add_index("access_level", index_type="INVERTED")
    if analyzer:
        _add_bm25(schema, index, "text", analyzer)
        _add_bm25(schema, index, "identifiers", IDENTIFIER_ANALYZER)
    # Strong consistency: a search right after an upsert sees it, without a flush per insert.
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    log.info("created Milvus collection %s (dim %d%s)", name, dim, f", {analyzer} analyser" if analyzer else "")


def _add_bm25(schema, index, field: str, analyzer: str) -> None:
    """`field` analysed, and `<field>_sparse`: its BM25 vector, computed by Milvus at insert."""
    schema.add_field(
        field, DataType.VARCHAR, max_length=TEXT_MAX_BYTES, enable_analyzer=True, analyzer_params={"type": analyzer}
    )
    schema.add_field(f"{field}_sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name=f"{field}_bm25",
            function_type=FunctionType.BM25,
            input_field_names=[field],
            output_field_names=[f"{field}_sparse"],
        )
    )
    index.add_index(f"{field}_sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")


def alias_target(client: MilvusClient, timeout: float | None = None) -> str | None:
    """The collection the alias `chunks` points at, or None before the first index."""
    if LIVE_ALIAS not in client.list_aliases(timeout=timeout).get("aliases", []):
        return None
    return client.describe_alias(LIVE_ALIAS, timeout=timeout).get("collection_name")


def point_live_alias(client: MilvusClient, collection: str) -> None:
    """Point the alias `chunks` at `collection` (one atomic switch when it already exists)."""
    current = alias_target(client)
    if current is None:
        client.create_alias(collection_name=collection, alias=LIVE_ALIAS)
    elif current != collection:
        client.alter_alias(collection_name=collection, alias=LIVE_ALIAS)


def ensure_loaded(client: MilvusClient, collection: str, timeout: float | None = None) -> None:
    """Load a collection for search (a reopened Milvus Lite file starts with it released).

    `timeout` bounds the check; loading a large collection takes what it takes."""
    state = client.get_load_state(collection, timeout=timeout).get("state")
    if getattr(state, "name", str(state)) != "Loaded":
        client.load_collection(collection)


def seal(client: MilvusClient, collections: list[str]) -> None:
    """Flush once a run of writes is over (never per insert): Milvus then indexes what it held in
    growing segments, which it searches by brute force — BM25 above all."""
    for collection in collections:
        if client.has_collection(collection):
            client.flush(collection)


def upsert(client: MilvusClient, collection: str, rows: list[VectorRow], keyword: bool = False) -> None:
    """Write `rows`; `keyword`: the collection holds text and identifiers, and every row brings them.
    Sent in requests of at most MILVUS_UPSERT_ROWS rows and about UPSERT_BYTES (texts included)."""
    batch: list[dict] = []
    size = 0
    for row in rows:
        entity = _entity(row, keyword)
        row_bytes = 4 * len(entity["vector"]) + len(entity.get("text", "")) * 4 + len(entity.get("identifiers", ""))
        if batch and (len(batch) >= MILVUS_UPSERT_ROWS or size + row_bytes > UPSERT_BYTES):
            client.upsert(collection, batch)
            batch, size = [], 0
        batch.append(entity)
        size += row_bytes
    if batch:
        client.upsert(collection, batch)


def _entity(row: VectorRow, keyword: bool) -> dict:
    entity = {
        "chunk_id": row.chunk_id,
        "document_id": row.document_id,
        "access_level": row.access_level,
        "vector": row.vector.tolist(),
    }
    if keyword:
        if row.text is None:
            raise ValueError(f"chunk {row.chunk_id}: a collection with keyword search needs its text")
        entity["text"] = _fit_bytes(row.text)
        entity["identifiers"] = _fit_bytes(row.identifiers, at_space=True)
    return entity


def _fit_bytes(text: str, at_space: bool = False) -> str:
    """`text` cut to TEXT_MAX_BYTES of UTF-8 at a character (or a space) boundary."""
    encoded = text.encode("utf-8")
    if len(encoded) <= TEXT_MAX_BYTES:
        return text
    cut = encoded[:TEXT_MAX_BYTES].decode("utf-8", errors="ignore")
    return cut.rsplit(" ", 1)[0] if at_space else cut


def delete(client: MilvusClient, collection: str, chunk_ids: list[str]) -> None:
    """Remove rows by primary key (pymilvus quotes the ids; no filter string of ours)."""
    for start in range(0, len(chunk_ids), MILVUS_UPSERT_ROWS):
        client.delete(collection, ids=chunk_ids[start : start + MILVUS_UPSERT_ROWS])


def count(client: MilvusClient, collection: str) -> int:
    result = client.query(collection, filter="", output_fields=["count(*)"])
    return int(result[0]["count(*)"])


def search(client: MilvusClient, collection: str, vector: np.ndarray, level: AccessLevel, top_k: int) -> list[Hit]:
    """Nearest chunks in `collection`, filtered inside Milvus to levels <= `level`."""
    return search_many(client, collection, [Query(vector=vector)], level, top_k)[0]


def search_many(
    client: MilvusClient,
    collection: str,
    queries: list[Query],
    level: AccessLevel,
    top_k: int,
    mode: str = DENSE,
    weights: Weights | None = None,
    timeout: float | None = None,
) -> list[list[Hit]]:
    """For each query, its best chunks in `collection` at levels <= `level`, best first.

    `dense`: nearest vectors. `keyword`: BM25 on the text. `hybrid`: both, fused by Milvus (RRF,
    or `weights`). The level filter is inside every request, never applied to a fused list. In
    the keyword and hybrid modes a query's identifiers are also matched whole (BM25 on the
    identifier field) and that score added: a chunk that holds the number typed ranks above those
    that hold a near miss, unless the number is in so many chunks that it tells nothing.
    """
    # The filter is built from a validated enum's integer: no user text reaches it.
    level_filter = f"access_level <= {int(level)}"
    if mode == DENSE:
        return _dense(client, collection, [query.vector for query in queries], level_filter, top_k, timeout)
    candidates = min(max(2 * top_k, FUSION_CANDIDATES), MAX_CANDIDATES)
    texts = [query.text for query in queries]
    if mode == KEYWORD:
        ranked = _bm25(client, collection, "text_sparse", texts, level_filter, candidates, timeout)
    else:
        vectors = [query.vector for query in queries]
        ranked = _hybrid(client, collection, vectors, texts, level_filter, candidates, weights, timeout)
    with_identifiers = [index for index, query in enumerate(queries) if query.identifiers]
    if with_identifiers:
        tokens = [queries[index].identifiers for index in with_identifiers]
        exact = _bm25(client, collection, "identifiers_sparse", tokens, level_filter, candidates, timeout)
        for index, matches in zip(with_identifiers, exact, strict=True):
            ranked[index] = _summed(ranked[index], matches)
    return [hits[:top_k] for hits in ranked]


def _dense(client, collection, vectors, level_filter: str, top_k: int, timeout) -> list[list[Hit]]:
    results = client.search(
        collection,
        data=[vector.tolist() for vector in vectors],
        limit=top_k,
        filter=level_filter,
        output_fields=["access_level"],
        search_params={"metric_type": "IP"},
        timeout=timeout,
    )
    return [[_hit(hit) for hit in per_query] for per_query in results]


def _bm25(client, collection, field: str, texts: list[str], level_filter: str, limit: int, timeout) -> list[list[Hit]]:
    results = client.search(
        collection,
        data=texts,
        anns_field=field,
        limit=limit,
        filter=level_filter,
        output_fields=["access_level"],
        search_params={"metric_type": "BM25"},
        timeout=timeout,
    )
    # BM25 is never negative; Milvus Lite reports it negated (its "distance").
    return [[_hit(hit, abs) for hit in per_query] for per_query in results]


def _hybrid(client, collection, vectors, texts, level_filter: str, limit: int, weights, timeout) -> list[list[Hit]]:
    requests = [
        AnnSearchRequest([v.tolist() for v in vectors], "vector", {"metric_type": "IP"}, limit, expr=level_filter),
        AnnSearchRequest(texts, "text_sparse", {"metric_type": "BM25"}, limit, expr=level_filter),
    ]
    ranker = _weighted(weights) if weights else RRFRanker(RRF_K)
    results = client.hybrid_search(
        collection, requests, ranker, limit=limit, output_fields=["access_level"], timeout=timeout
    )
    return [[_hit(hit) for hit in per_query] for per_query in results]


def _weighted(weights: Weights) -> MilvusWeightedRanker:
    # Only their ratio matters: scaled to at most 1, so that no sum of scores overflows.
    largest = max(weights.dense, weights.keyword)
    return MilvusWeightedRanker(weights.dense / largest, weights.keyword / largest)


def _hit(hit: dict, score=float) -> Hit:
    # pymilvus 2.5 names the primary key `id` in a hit, 3.x by its field's name.
    chunk_id = hit["id"] if "id" in hit else hit["chunk_id"]
    return Hit(chunk_id, float(score(hit["distance"])), int(hit["entity"]["access_level"]))


def _summed(ranked: list[Hit], matches: list[Hit]) -> list[Hit]:
    """`ranked` with each identifier match's score added (a match not in it joins), best first."""
    scores = {hit.chunk_id: hit for hit in ranked}
    for match in matches:
        fused = scores[match.chunk_id].score if match.chunk_id in scores else 0.0
        scores[match.chunk_id] = Hit(match.chunk_id, match.score + fused, match.access_level)
    return sorted(scores.values(), key=lambda hit: hit.score, reverse=True)
