"""What passes between the worker pipeline's stages."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.core.stores.catalog import IndexVersion
from workers.core.stores.progress import PendingChunk


@dataclass
class WorkGroup:
    version: IndexVersion
    chunks: list[PendingChunk]


@dataclass
class Batch:
    version: IndexVersion
    chunks: list[PendingChunk]
    ids: list[list[int]]
    features: Any

    @property
    def tokens(self) -> int:
        return sum(len(sequence) for sequence in self.ids)

    @property
    def padded_tokens(self) -> int:
        return max(len(sequence) for sequence in self.ids) * len(self.ids)


@dataclass
class Embedded:
    version: IndexVersion
    chunks: list[PendingChunk]
    vectors: np.ndarray


@dataclass
class Failed:
    version: IndexVersion
    chunk_ids: list[str]
    kind: str
    error: str


def chunk_ids_of(item: Any) -> tuple[int, list[str]]:
    """The version and chunk ids an item carries: what a stage error fails."""
    if isinstance(item, Failed):
        return item.version.id, item.chunk_ids
    return item.version.id, [chunk.id for chunk in item.chunks]
