"""The tokenize stage: groups become length-sorted batches under the token budget, collated.

Groups already waiting are planned together (fuller batches when work is plentiful, no waiting
when it is not). A chunk longer than the configured budget fails as `too_long`; after a device
OOM lowered the budget, a chunk above it still goes, in a batch of its own.
"""

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from workers.batching import plan_batches
from workers.core.settings import FleetSettings
from workers.engine.claim import CLAIM_CHUNKS
from workers.engine.forward import Budget
from workers.engine.messages import Batch, Failed, WorkGroup
from workers.engine.pipeline import STOP, drain
from workers.engine.resources import Resources

log = logging.getLogger(__name__)


class Tokenize:
    def __init__(
        self,
        settings: FleetSettings,
        resources: Resources,
        budget: Budget,
        inbox: queue.Queue,
        starving: Callable[[], bool],
        abandoned: threading.Event,
        abort: Callable[[Any, Exception | None], None],
    ):
        self.settings = settings
        self.resources = resources
        self.budget = budget
        self.inbox = inbox
        self.starving = starving
        self.abandoned = abandoned
        self.abort = abort  # abort(item, None): dropped because the engine is abandoning its work

    def __call__(self, first: WorkGroup) -> Iterator[Batch | Failed]:
        limit = len(first.chunks) if self.starving() else 2 * CLAIM_CHUNKS
        groups, stop_seen = drain(self.inbox, first, limit, lambda group: len(group.chunks))
        merged: dict[int, WorkGroup] = {}
        for group in groups:
            if group.version.id in merged:
                merged[group.version.id].chunks.extend(group.chunks)
            else:
                merged[group.version.id] = WorkGroup(group.version, list(group.chunks))
        try:
            for group in merged.values():
                try:
                    yield from self._plan(group)
                except Exception as err:  # this group's tasks fail (and retry); the others go on
                    log.exception("could not tokenize %d chunks", len(group.chunks))
                    self.abort(group, err)
        finally:
            if stop_seen:
                self.inbox.put(STOP)

    def _plan(self, group: WorkGroup) -> Iterator[Batch | Failed]:
        """Tokenize a group, then cut it into length-sorted batches under the budget, padded."""
        if self.abandoned.is_set():
            self.abort(group, None)
            return
        encoder = self.resources.encoder(group.version.model, group.version.quantize)
        ids = encoder.tokenize([chunk.text for chunk in group.chunks])
        limit = self.settings.batch_tokens
        too_long = {i for i, sequence in enumerate(ids) if len(sequence) > limit}
        if too_long:
            yield Failed(
                group.version,
                [group.chunks[i].id for i in too_long],
                "too_long",
                f"longer than the batch budget of {limit} tokens: raise FLEET_BATCH_TOKENS",
            )
        keep = [i for i in range(len(ids)) if i not in too_long]
        lengths = [len(ids[i]) for i in keep]
        budget = max([self.budget.tokens, *lengths])
        for batch in plan_batches(lengths, budget, packed=encoder.packs_sequences):
            members = [keep[i] for i in batch]
            if self.abandoned.is_set():
                self.abort(WorkGroup(group.version, [group.chunks[i] for i in members]), None)
                continue
            batch_ids = [ids[i] for i in members]
            yield Batch(group.version, [group.chunks[i] for i in members], batch_ids, encoder.collate(batch_ids))
