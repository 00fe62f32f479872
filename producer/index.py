"""The live index version: created on first use, and the model everything is chunked for.

Once an index exists, its model decides: chunks are sized by the live model's tokenizer, and a
different FLEET_MODEL only warns (a re-index, `migrate reindex`, moves the index to it).
"""

import logging

import psycopg
from pymilvus import MilvusClient

from workers.core.constants import STATE_LIVE
from workers.core.errors import ConfigError, InvalidInput
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus
from workers.core.stores.catalog import IndexVersion
from workers.embedding.model_info import ModelInfo

log = logging.getLogger(__name__)

NOTHING_INDEXED = "nothing is indexed yet: run `producer ingest PATH` first"


def target_dim(dim: int | None, info: ModelInfo) -> int:
    """`dim`, or the model's own dimension; larger than the model's is an error."""
    dim = dim or info.dim
    if dim > info.dim:
        raise ConfigError(f"dimension {dim} exceeds the {info.dim} dimensions of {info.name}")
    return dim


def ensure_live_version(
    conn: psycopg.Connection, client: MilvusClient, settings: FleetSettings, info: ModelInfo
) -> tuple[IndexVersion, str | None]:
    """The live version (created with its collection and alias on first use), and a warning
    when the settings name another model or dimension than it has."""
    live, warning = live_version_for(conn, settings, info)
    ensure_live_collection(client, live)
    return live, warning


def live_version_for(
    conn: psycopg.Connection, settings: FleetSettings, info: ModelInfo
) -> tuple[IndexVersion, str | None]:
    """The live version in Postgres (created on first use), and a warning when the settings name
    another model or dimension than it has. Its collection: `ensure_live_collection`."""
    live = catalog.live_version(conn)
    if live is None:
        dim = target_dim(settings.embed_dim, info)
        live = catalog.create_version(conn, settings.model, dim, STATE_LIVE, settings.quantize)
    warning = None
    wanted = (settings.model, settings.embed_dim or live.dim, settings.quantize)
    if (live.model, live.dim, live.quantize) != wanted:
        warning = (
            f"the live index uses model {live.model!r} at {live.dim} dims ({live.quantize} quantization); "
            f"FLEET_MODEL/FLEET_EMBED_DIM/FLEET_QUANTIZE name {settings.model!r} at "
            f"{settings.embed_dim or 'its own'} dims ({settings.quantize}): chunking for the live model "
            "(run `migrate reindex` to move the index)"
        )
    return live, warning


def ensure_live_collection(client: MilvusClient, live: IndexVersion) -> None:
    """The live version's collection, and the alias on it when there is none yet."""
    milvus.ensure_collection(client, live.collection, live.dim, live.analyzer)
    if milvus.alias_target(client) is None:
        milvus.point_live_alias(client, live.collection)


def serving_version(conn: psycopg.Connection, client: MilvusClient) -> IndexVersion:
    """The version behind the alias `chunks`: its collection, and the model that embeds its queries.

    Read from the alias itself, so that a search during a cutover uses one consistent pair.
    """
    version = version_behind_alias(conn, client)
    if version is None:
        raise InvalidInput(NOTHING_INDEXED)
    return version


def version_behind_alias(
    conn: psycopg.Connection, client: MilvusClient, timeout: float | None = None
) -> IndexVersion | None:
    """The version the alias `chunks` points at; None before the first index."""
    collection = milvus.alias_target(client, timeout)
    return catalog.version_by_collection(conn, collection) if collection else None
