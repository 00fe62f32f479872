"""Milvus: one collection per index version, the alias `chunks` on the live one.

Rows are keyed by our deterministic chunk id (auto_id off: milvus#50355 re-inserts upserts
under new keys otherwise), so a task delivered twice writes the same rows.
"""

import logging
import time
from dataclasses import dataclass

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from workers.core.access import AccessLevel
from workers.core.constants import LIVE_ALIAS, MILVUS_UPSERT_ROWS
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)

CHUNK_ID_MAX_LENGTH = 64
RECONNECT_PAUSE_S = 1.0


@dataclass(frozen=True)
class VectorRow:
    chunk_id: str
    document_id: int
    access_level: int
    vector: np.ndarray


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    score: float
    access_level: int  # as stored with the vector in Milvus


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


def ensure_collection(client: MilvusClient, name: str, dim: int) -> None:
    """Create the collection of an index version if it does not exist yet."""
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
    # Strong consistency: a search right after an upsert sees it, without a flush per insert.
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    log.info("created Milvus collection %s (dim %d)", name, dim)


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


def upsert(client: MilvusClient, collection: str, rows: list[VectorRow]) -> None:
    for start in range(0, len(rows), MILVUS_UPSERT_ROWS):
        batch = rows[start : start + MILVUS_UPSERT_ROWS]
        client.upsert(
            collection,
            [
                {
                    "chunk_id": row.chunk_id,
                    "document_id": row.document_id,
                    "access_level": row.access_level,
                    "vector": row.vector.tolist(),
                }
                for row in batch
            ],
        )


def delete(client: MilvusClient, collection: str, chunk_ids: list[str]) -> None:
    """Remove rows by primary key (pymilvus quotes the ids; no filter string of ours)."""
    for start in range(0, len(chunk_ids), MILVUS_UPSERT_ROWS):
        client.delete(collection, ids=chunk_ids[start : start + MILVUS_UPSERT_ROWS])


def count(client: MilvusClient, collection: str) -> int:
    result = client.query(collection, filter="", output_fields=["count(*)"])
    return int(result[0]["count(*)"])


def search(client: MilvusClient, collection: str, vector: np.ndarray, level: AccessLevel, top_k: int) -> list[Hit]:
    """Nearest chunks in `collection`, filtered inside Milvus to levels <= `level`."""
    return search_many(client, collection, [vector], level, top_k)[0]


def search_many(
    client: MilvusClient,
    collection: str,
    vectors: list[np.ndarray],
    level: AccessLevel,
    top_k: int,
    timeout: float | None = None,
) -> list[list[Hit]]:
    """For each vector, its nearest chunks in `collection` at levels <= `level`: one request."""
    # The filter is built from a validated enum's integer: no user text reaches it.
    results = client.search(
        collection,
        data=[vector.tolist() for vector in vectors],
        limit=top_k,
        filter=f"access_level <= {int(level)}",
        output_fields=["access_level"],
        search_params={"metric_type": "IP"},
        timeout=timeout,
    )
    return [
        [Hit(hit["chunk_id"], float(hit["distance"]), int(hit["entity"]["access_level"])) for hit in per_vector]
        for per_vector in results
    ]
