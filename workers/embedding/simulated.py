"""An encoder without a model, for measuring everything around the forward pass.

It tokenizes with the real model's tokenizer (or counts words for `null`), and its forward
holds each batch for tokens ÷ tokens_per_s seconds in `time.sleep` — which releases the GIL,
as a CUDA kernel does — then returns unit vectors. `null:DIM` does not wait at all.
"""

import time

import numpy as np

from workers.embedding.base import Encoder
from workers.embedding.model_info import ModelInfo
from workers.embedding.tokenizer import TokenCounter, load_token_counter


class SimulatedEncoder(Encoder):
    def __init__(self, info: ModelInfo, tokens_per_s: float | None = None, dim: int | None = None):
        super().__init__(info)
        self.tokens_per_s = tokens_per_s
        self.dim = dim or info.dim
        self._counter: TokenCounter = load_token_counter(info)
        self._unit = np.full(self.dim, 1 / np.sqrt(self.dim), dtype=np.float32)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self._counter.ids(texts)

    def collate(self, ids: list[list[int]]) -> list[int]:
        return [len(sequence) for sequence in ids]

    def forward(self, batch: list[int], dim: int) -> np.ndarray:
        if self.tokens_per_s:
            time.sleep(sum(batch) / self.tokens_per_s)
        return np.tile(self._unit[:dim] / np.linalg.norm(self._unit[:dim]), (len(batch), 1))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encode_documents(texts)
