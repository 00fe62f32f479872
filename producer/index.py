"""The index versions the producer writes to, and the check that its model matches the live one."""

import psycopg
from pymilvus import MilvusClient

from workers.constants import STATE_LIVE
from workers.embedding.model_info import ModelInfo
from workers.errors import ConfigError
from workers.settings import FleetSettings
from workers.stores import catalog, milvus
from workers.stores.catalog import IndexVersion


def target_dim(settings: FleetSettings, info: ModelInfo) -> int:
    """FLEET_EMBED_DIM, or the model's own dimension; larger than the model's is an error."""
    dim = settings.embed_dim or info.dim
    if dim > info.dim:
        raise ConfigError(f"FLEET_EMBED_DIM={dim} exceeds the {info.dim} dimensions of {info.name}")
    return dim


def ensure_live_version(
    conn: psycopg.Connection, client: MilvusClient, settings: FleetSettings, info: ModelInfo
) -> IndexVersion:
    """The live version, created with its collection and alias on first use.

    The configured model must be the live version's: chunks are sized by its tokenizer.
    """
    dim = target_dim(settings, info)
    live = catalog.live_version(conn)
    if live is None:
        live = catalog.create_version(conn, settings.model, dim, STATE_LIVE)
    if (live.model, live.dim) != (settings.model, dim):
        raise ConfigError(
            f"the live index uses model {live.model!r} at {live.dim} dims, but FLEET_MODEL={settings.model!r} "
            f"at {dim}: set FLEET_MODEL and FLEET_EMBED_DIM to the live index's (a re-index moves it to another model)"
        )
    milvus.ensure_collection(client, live.collection, live.dim)
    milvus.point_live_alias(client, live.collection)
    return live
