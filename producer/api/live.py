"""Follow the live index: the version behind the alias `chunks`, and its model, loaded and warm.

Polled every FLEET_API_POLL_S. When a cutover or rollback points the alias at another version,
the new model is loaded (kept loaded if it is the same), its collection loaded, and both warmed
by a real forward pass and search, while requests keep being served by the old pair; then one
assignment switches. A request takes the pair once, at its start, so it is answered by one
consistent model and collection (the retired collection stays loaded for rollback).

A replica that cannot switch (the new collection will not load, the model will not load) says so
rather than go on answering from the retired version, which no longer receives new chunks nor
access changes: it is not ready, requests get 503 with the reason, and every poll tries again.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from producer.api.embedder import use_cpu_threads
from producer.api.stores import Stores, describe
from producer.index import NOTHING_INDEXED, version_behind_alias
from producer.search import encoder_for
from workers.core.errors import ServiceUnavailable
from workers.core.stores import milvus
from workers.core.stores.catalog import IndexVersion
from workers.embedding import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Live:
    version: IndexVersion
    encoder: Encoder
    since: float  # time.time() of the switch

    def describe(self) -> dict:
        version = self.version
        return {
            "name": version.collection,
            "model": version.model,
            "dim": version.dim,
            "modes": list(version.modes),
            "default_mode": version.default_mode,
        }


class LiveIndex:
    def __init__(
        self,
        stores: Stores,
        device: str,
        threads: int,
        warm: Callable[[Live], None],
        on_switch: Callable[[Live | None, Live], None],
    ):
        self.stores = stores
        self.device = device
        self.threads = threads
        self._warm = warm
        self._on_switch = on_switch
        self.current: Live | None = None
        self.problem: str | None = "the live index has not been read yet"
        # Why the live version is not the one loaded, while a switch to it fails; None otherwise.
        self.behind: str | None = None

    def serving(self) -> Live:
        """The pair to answer with, or ServiceUnavailable saying why there is none to trust."""
        if self.behind is not None:
            raise ServiceUnavailable(self.behind)
        if self.current is None:
            raise ServiceUnavailable(f"no index to serve yet: {self.problem}")
        return self.current

    def tick(self) -> None:
        """Read which version is live; switch to it (loaded and warm) if it is another. What fails
        is raised to the poller (which says it once); before the first switch it is also why the
        service is not ready."""
        try:
            self._follow()
        except Exception as err:
            if self.current is None:
                self.problem = describe(err)
            raise

    def _follow(self) -> None:
        version = self._serving_version()
        if version is None:  # nothing indexed yet: not ready, and no reason to log
            self.problem = NOTHING_INDEXED
            return
        if self.current is not None and self.current.version.id == version.id:
            self._ensure_loaded(version.collection)  # after a Milvus restart, say
            self.problem = self.behind = None  # a rollback to it ends a failed switch too
            return
        started = time.perf_counter()
        try:
            candidate = self.load(version)
        except Exception as err:
            if self.current is not None:
                self.behind = (
                    f"the live index is now {version.collection}, which this replica cannot load "
                    f"({describe(err)}); it answers 503 rather than from {self.current.version.collection}, "
                    "which no longer receives new chunks, and tries again every poll"
                )
            raise
        previous, self.current = self.current, candidate
        self.problem = self.behind = None
        log.info(
            "serving %s (%s, %d dims)%s; loaded and warmed in %.1f s",
            version.collection,
            version.model,
            version.dim,
            f", was {previous.version.collection}" if previous else "",
            time.perf_counter() - started,
        )
        self._on_switch(previous, candidate)

    def load(self, version: IndexVersion) -> Live:
        """`version`'s model and collection, loaded and warmed by a real forward pass and search."""
        candidate = Live(version, encoder_for(version.model, self.device, version.quantize), time.time())
        if not candidate.encoder.info.is_test_model:
            use_cpu_threads(self.threads)
        self._ensure_loaded(version.collection)
        self._warm(candidate)
        return candidate

    # With timeouts: pymilvus retries a call that gets no answer for minutes unless it is given
    # one, and the follower must go on.

    def _serving_version(self) -> IndexVersion | None:
        with self.stores.connection() as conn:
            return version_behind_alias(conn, self.stores.milvus(), self.stores.timeout_s)

    def _ensure_loaded(self, collection: str) -> None:
        milvus.ensure_loaded(self.stores.milvus(), collection, self.stores.timeout_s)
