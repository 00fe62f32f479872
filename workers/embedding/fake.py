"""A deterministic encoder for fast tests: hashed bag of words, no model, no torch.

Texts that share words get similar vectors, so search over it behaves like a (lexical) search
and a query that quotes a document finds it.
"""

import hashlib
import re

import numpy as np

from workers.embedding.base import Encoder, fit_dimension

_WORD = re.compile(r"\w+", re.UNICODE)
_END = 0  # stands for the special token a real tokenizer appends


def word_id(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") | 1


class FakeEncoder(Encoder):
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[word_id(word) for word in _WORD.findall(text.lower())] + [_END] for text in texts]

    def collate(self, ids: list[list[int]]) -> list[list[int]]:
        return ids

    def forward(self, batch: list[list[int]], dim: int) -> np.ndarray:
        if not batch:
            return np.zeros((0, dim), dtype=np.float32)
        return fit_dimension(np.stack([self._vector(ids) for ids in batch]), dim)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encode_documents(texts)

    def _vector(self, ids: list[int]) -> np.ndarray:
        vector = np.zeros(self.info.dim, dtype=np.float32)
        for token in ids:
            if token != _END:
                vector[(token >> 8) % self.info.dim] += 1.0 if token & 2 else -1.0
        if not vector.any():
            vector[0] = 1.0
        return vector
