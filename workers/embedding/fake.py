"""A deterministic encoder for fast tests: hashed bag of words, no model, no torch.

Texts that share words get similar vectors, so search over it behaves like a (lexical) search
and a query that quotes a document finds it.
"""

import hashlib
import re

import numpy as np

from workers.embedding.base import Encoder

_WORD = re.compile(r"\w+", re.UNICODE)


class FakeEncoder(Encoder):
    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vector(text) for text in texts]) if texts else self._empty()

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encode_documents(texts)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.info.dim), dtype=np.float32)

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.info.dim, dtype=np.float32)
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self.info.dim
            vector[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = np.linalg.norm(vector)
        if norm == 0:
            vector[0] = 1.0
            return vector
        return vector / norm
