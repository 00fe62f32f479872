"""The forward stage: the model on the device, and the token budget that a device OOM lowers.

A batch that runs out of device memory lowers the budget (to 3/4 of what failed) and is split in
halves; the budget is won back slowly (+2 % a batch) as memory frees up. One chunk alone that
does not fit is a transient failure: its task retries, and its attempts bound the retries.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from workers import metrics
from workers.core.errors import DeviceOutOfMemory
from workers.embedding import Encoder
from workers.engine.messages import Batch, Embedded, Failed
from workers.engine.resources import Resources

log = logging.getLogger(__name__)

MIN_BUDGET_TOKENS = 512
BUDGET_GROWTH = 1.02


class Budget:
    """Tokens per batch: the configured limit, lowered after a device OOM."""

    def __init__(self, limit: int):
        self.limit = limit
        self.tokens = limit

    def shrink(self, cost: int) -> None:
        self.tokens = max(MIN_BUDGET_TOKENS, int(min(self.tokens, cost) * 0.75))

    def grow(self) -> None:
        self.tokens = min(self.limit, int(self.tokens * BUDGET_GROWTH) + 1)


class Forward:
    def __init__(
        self,
        resources: Resources,
        budget: Budget,
        abandoned: threading.Event,
        abort: Callable[[Any, Exception | None], None],
    ):
        self.resources = resources
        self.budget = budget
        self.abandoned = abandoned
        self.abort = abort
        self.peak_memory_bytes = 0
        self.first_forward_at: float | None = None  # perf_counter() when the first forward pass began

    def __call__(self, item: Batch | Failed) -> Iterator[Embedded | Failed]:
        if isinstance(item, Failed):
            yield item
            return
        if self.abandoned.is_set():
            self.abort(item, None)
            return
        yield from self._splitting(self.resources.encoder(item.version.model, item.version.quantize), item)

    def _splitting(self, encoder: Encoder, batch: Batch) -> Iterator[Embedded | Failed]:
        """Forward a batch; on device OOM shrink the budget and forward its halves."""
        started = time.perf_counter()
        try:
            vectors = encoder.forward(batch.features, batch.version.dim)
        except DeviceOutOfMemory as err:
            metrics.FAILURES.labels("oom_split").inc()
            self.budget.shrink(batch.tokens if encoder.packs_sequences else batch.padded_tokens)
            log.warning("%s; batch budget now %d tokens", err, self.budget.tokens)
            if len(batch.chunks) == 1:
                raise  # transient: the task retries, and the chunk's attempts bound the retries
            middle = len(batch.chunks) // 2
            for part in (slice(0, middle), slice(middle, None)):
                ids = batch.ids[part]
                yield from self._splitting(encoder, Batch(batch.version, batch.chunks[part], ids, encoder.collate(ids)))
            return
        padded = batch.tokens if encoder.packs_sequences else batch.padded_tokens
        if self.first_forward_at is None:
            self.first_forward_at = started
        # Memory freed since an OOM (other models, fragmentation): win the budget back slowly.
        self.budget.grow()
        self.peak_memory_bytes = max(self.peak_memory_bytes, encoder.peak_memory_bytes())
        metrics.FORWARD_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(batch.chunks))
        metrics.BATCH_PADDING.observe(1 - batch.tokens / padded)
        metrics.TOKENS_EMBEDDED.inc(batch.tokens)
        metrics.GPU_MEMORY.set(self.peak_memory_bytes)
        yield Embedded(batch.version, batch.chunks, vectors)
