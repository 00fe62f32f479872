"""What the engine's stages share: Postgres connections, the Milvus client, index versions and
encoders, each opened on first use and kept (reopened when a service dropped it)."""

from collections.abc import Callable

import psycopg

from workers import metrics
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, postgres
from workers.core.stores.catalog import IndexVersion
from workers.embedding import Encoder, load_encoder

EncoderLoader = Callable[[str, str, str], Encoder]  # (model, device, quantize) -> encoder


class Resources:
    def __init__(self, settings: FleetSettings, encoder_loader: EncoderLoader | None = None):
        self.settings = settings
        self._load_encoder = encoder_loader or self._load
        self._encoders: dict[tuple[str, str], Encoder] = {}  # by (model, quantize)
        self._versions: dict[int, IndexVersion] = {}
        self._collections_ready: set[str] = set()
        self._conns: dict[str, psycopg.Connection] = {}
        self._milvus = None

    def conn(self, stage: str) -> psycopg.Connection:
        """The claim and sink stages each have their own connection (psycopg serialises a connection)."""
        conn = self._conns.get(stage)
        if conn is None or conn.closed or conn.broken:
            conn = self._conns[stage] = postgres.connect(self.settings)
        return conn

    def vectors(self):
        if self._milvus is None:
            self._milvus = milvus.connect(self.settings)
        return self._milvus

    def drop_vectors(self) -> None:
        """Milvus was out: reconnect on the next write."""
        self._milvus = None

    def collection(self, version: IndexVersion):
        """The Milvus client, with `version`'s collection made sure of once."""
        client = self.vectors()
        if version.collection not in self._collections_ready:
            milvus.ensure_collection(client, version.collection, version.dim, version.analyzer)
            self._collections_ready.add(version.collection)
        return client

    def version(self, version_id: int) -> IndexVersion | None:
        if version_id not in self._versions:
            version = catalog.get_version(self.conn("claim"), version_id)
            if version is None:
                return None
            self._versions[version_id] = version
        return self._versions[version_id]

    def encoder(self, model: str, quantize: str = "none") -> Encoder:
        """The encoder of an index version's model, loaded on first use and kept."""
        key = (model, quantize)
        if key not in self._encoders:
            self._encoders[key] = self._load_encoder(model, self.settings.device, quantize)
            metrics.MODEL_LOADED.labels(model if quantize == "none" else f"{model} ({quantize})").set(1)
        return self._encoders[key]

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _load(self, model: str, device: str, quantize: str) -> Encoder:
        return load_encoder(model, device, self.settings.attention, quantize)
