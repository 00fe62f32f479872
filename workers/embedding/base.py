"""The encoder interface and the Matryoshka dimension fit shared by every encoder.

An encoder works in three steps so that a worker can run them on different threads:
`tokenize` (CPU), `collate` (CPU: pad a planned batch into tensors) and `forward` (the device:
model, pooling, truncation to the index dimension, normalisation, copy out).
"""

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from workers.core.errors import ConfigError
from workers.embedding.model_info import ModelInfo


class Encoder(ABC):
    """Turns texts into unit vectors (float32 rows)."""

    # True when a batch is one flat sequence (varlen attention): it costs the sum of its lengths.
    packs_sequences = False

    def __init__(self, info: ModelInfo):
        self.info = info

    @abstractmethod
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each passage as the model reads them (special tokens included)."""

    @abstractmethod
    def collate(self, ids: list[list[int]]) -> Any:
        """One forward pass's input for these sequences (padded tensors for a transformer)."""

    @abstractmethod
    def forward(self, batch: Any, dim: int) -> np.ndarray:
        """Unit vectors of `dim` components for a collated batch."""

    @abstractmethod
    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors of search queries, with the model's query prompt where it has one."""

    def encode_documents(self, texts: list[str], dim: int | None = None) -> np.ndarray:
        """Vectors of passages in one forward pass (the caller plans batches)."""
        return self.forward(self.collate(self.tokenize(texts)), dim or self.info.dim)

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated so far (0 where the device does not tell)."""
        return 0


def fit_dimension(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Keep the first `dim` components and renormalise (Matryoshka truncation)."""
    if dim > vectors.shape[1]:
        raise ConfigError(f"FLEET_EMBED_DIM={dim} is larger than the model's {vectors.shape[1]} dimensions")
    head = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return head / np.maximum(norms, 1e-12)
