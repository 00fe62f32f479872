"""The query side of the model: texts of concurrent requests embedded in shared forward passes.

The same three steps as a worker (tokenize, plan token-budget batches, forward), so a query
embedded here equals the same text embedded alone by `producer search` (the query prompt
prepended as sentence-transformers does, truncated and renormalised to the index dimension).
"""

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from workers.batching import plan_batches
from workers.embedding import Encoder

# Characters per token, for sizing a batch before it is tokenized (the plan uses real counts).
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, eq=False)
class EmbedItem:
    encoder: Encoder
    dim: int
    text: str  # as the model reads it: a query carries its prompt
    ids: list[int] | None = None  # its tokens, when the request counted them already


@dataclass(frozen=True, eq=False)
class Embedded:
    vector: np.ndarray  # unit length, `dim` components
    tokens: int  # tokens the model read, special tokens included


def as_query(encoder: Encoder, text: str) -> str:
    """A query as the model's query prompt wants it (sentence-transformers prepends the prompt)."""
    return encoder.info.query_prompt + text


def use_cpu_threads(threads: int) -> None:
    """Give the model's CPU forward passes `threads` threads (0: leave torch's default)."""
    if threads:
        import torch  # only for a real model: the fake one needs no torch

        torch.set_num_threads(threads)


def estimated_tokens(item: EmbedItem) -> int:
    """The item's tokens: counted when it was tokenized already, else estimated from its length."""
    return len(item.ids) if item.ids is not None else len(item.text) // _CHARS_PER_TOKEN + 2


def token_ids(encoder: Encoder, texts: list[str]) -> list[list[int]]:
    """Each text's tokens as the model reads them (blocking: run it off the event loop)."""
    return encoder.tokenize(texts) if texts else []


def embed_batch(items: list[EmbedItem], budget: int) -> list[Embedded]:
    """Embed `items` in as few forward passes as the token budget allows; results in item order.

    Items of several encoders (during a switch of the live index) are embedded by their own.
    """
    results: list[Embedded | None] = [None] * len(items)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((id(item.encoder), item.dim), []).append(index)
    for indices in groups.values():
        encoder, dim = items[indices[0]].encoder, items[indices[0]].dim
        ids = _ids(encoder, [items[index] for index in indices])
        # A sequence longer than the budget still runs, alone: the budget plans, it does not refuse.
        lengths = [min(len(sequence), budget) for sequence in ids]
        for planned in plan_batches(lengths, budget, encoder.packs_sequences):
            vectors = encoder.forward(encoder.collate([ids[position] for position in planned]), dim)
            for position, vector in zip(planned, vectors, strict=True):
                results[indices[position]] = Embedded(vector, len(ids[position]))
    return results  # type: ignore[return-value]


def _ids(encoder: Encoder, items: list[EmbedItem]) -> list[list[int]]:
    """The items' tokens: those counted by their request, the others tokenized here, together."""
    untokenized = [position for position, item in enumerate(items) if item.ids is None]
    tokenized = encoder.tokenize([items[position].text for position in untokenized]) if untokenized else []
    ids = [item.ids for item in items]
    for position, sequence in zip(untokenized, tokenized, strict=True):
        ids[position] = sequence
    return ids  # type: ignore[return-value]


class VectorCache:
    """The most recently used vectors, keyed by (index version, kind, text). Event-loop only."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[Hashable, Embedded] = OrderedDict()

    def get(self, key: Hashable) -> Embedded | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: Hashable, value: Embedded) -> None:
        if self.size <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
