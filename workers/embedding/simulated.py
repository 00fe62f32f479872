"""An encoder without a model, for measuring everything around the forward pass.

It tokenizes with the real model's tokenizer (or counts words for `null`), and its forward
holds each batch for tokens ÷ tokens_per_s seconds in `time.sleep` — which releases the GIL,
as a CUDA kernel does — then returns unit vectors. `null:DIM` does not wait at all.

The vectors differ by text (a mix of three of 256 fixed random directions, picked by a hash of the
tokens): an index of them has the spread of a real one, so an ANN index built over a million of
them (ops/bench/scale.py) behaves as it would with a model, not as over one repeated point.
"""

import time
import zlib

import numpy as np

from workers.embedding.base import Encoder
from workers.embedding.model_info import ModelInfo
from workers.embedding.tokenizer import TokenCounter, load_token_counter

_DIRECTIONS = 256


class SimulatedEncoder(Encoder):
    def __init__(self, info: ModelInfo, tokens_per_s: float | None = None, dim: int | None = None):
        super().__init__(info)
        self.tokens_per_s = tokens_per_s
        self.dim = dim or info.dim
        self._counter: TokenCounter = load_token_counter(info)
        self._directions = np.random.default_rng(0).standard_normal((_DIRECTIONS, self.dim), dtype=np.float32)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._counter.ids(texts)

    def collate(self, ids: list[list[int]]) -> list[tuple[int, int]]:
        """(tokens, a hash of them) per sequence: what the wait and the vector depend on."""
        return [(len(sequence), zlib.crc32(np.asarray(sequence, dtype=np.int64).tobytes())) for sequence in ids]

    def forward(self, batch: list[tuple[int, int]], dim: int) -> np.ndarray:
        if self.tokens_per_s:
            time.sleep(sum(tokens for tokens, _ in batch) / self.tokens_per_s)
        seeds = np.array([seed for _, seed in batch], dtype=np.int64).reshape(-1)
        directions = self._directions[:, :dim]
        vectors = (
            directions[seeds % _DIRECTIONS]
            + 0.5 * directions[(seeds >> 8) % _DIRECTIONS]
            + 0.25 * directions[(seeds >> 16) % _DIRECTIONS]
        )
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encode_documents(texts)
