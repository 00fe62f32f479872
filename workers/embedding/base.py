"""The encoder interface and the Matryoshka dimension fit shared by every encoder."""

from abc import ABC, abstractmethod

import numpy as np

from workers.embedding.model_info import ModelInfo
from workers.errors import ConfigError


class Encoder(ABC):
    """Turns texts into unit vectors of the model's native dimension (float32 rows)."""

    def __init__(self, info: ModelInfo):
        self.info = info

    @abstractmethod
    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Vectors of passages, one forward pass for the whole list (the caller plans batches)."""

    @abstractmethod
    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors of search queries, with the model's query prompt where it has one."""


def fit_dimension(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Keep the first `dim` components and renormalise (Matryoshka truncation)."""
    if dim > vectors.shape[1]:
        raise ConfigError(f"FLEET_EMBED_DIM={dim} is larger than the model's {vectors.shape[1]} dimensions")
    head = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return head / np.maximum(norms, 1e-12)
