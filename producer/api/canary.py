"""A canary: a version still being built (`migrate reindex --canary PERCENT`) that answers a share
of `/v1/search` before it goes live, and the figures that compare it with the live version.

Which version answers a key is stable: a hash of the canary's id and the key's name, below the
share, means the canary. So one user sees one version for the canary's whole life, a new canary
draws its keys afresh, and over many keys the share is what was asked. Embeddings and the
command line stay on the live version.

The canary is followed every poll like the live index. One that cannot be loaded is said once
per poll and its share answered by the live version meanwhile: the replica stays ready (the live
index is whole), unlike a live version it cannot load.

Every search is counted for the version that answered it (searches, searches with no hit, hits,
seconds): in memory on the request path, added to `version_search_stats` in Postgres at every
poll, where `migrate status` reads all replicas' figures together.
"""

import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable

from producer.api.live import Live
from producer.api.stores import Stores
from workers.core.stores import catalog
from workers.core.stores.catalog import IndexVersion

log = logging.getLogger(__name__)

_BUCKETS = 10_000  # shares to a hundredth of a percent


def answers_from_canary(canary_id: int, caller: str, percent: float) -> bool:
    """Whether the key named `caller` is among the `percent` % that the canary answers."""
    digest = hashlib.sha256(f"{canary_id}:{caller}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS < percent * _BUCKETS / 100


class CanaryFollower:
    def __init__(self, stores: Stores, load: Callable[[IndexVersion], Live]):
        self.stores = stores
        self._load = load
        self.current: tuple[Live, float] | None = None

    def for_caller(self, caller: str) -> Live | None:
        """The canary when it answers this key, else None (the live version does)."""
        current = self.current  # one read: a poll may replace it meanwhile
        if current is None:
            return None
        live, percent = current
        return live if answers_from_canary(live.version.id, caller, percent) else None

    def tick(self) -> None:
        with self.stores.connection() as conn:
            found = catalog.canary(conn)
        if found is None:
            if self.current is not None:
                log.info("canary %s ended: every search from the live version", self.current[0].version.collection)
            self.current = None
            return
        version, percent = found
        if self.current is not None and self.current[0].version.id == version.id:
            self.current = (self.current[0], percent)
            return
        self.current = None  # until it is loaded, the live version answers its share
        self.current = (self._load(version), percent)
        log.info("canary %s (%s) answers %g %% of the searches", version.collection, version.model, percent)


class SearchFigures:
    """Searches, empty answers, hits and seconds per version, added to Postgres at every poll."""

    def __init__(self, stores: Stores):
        self.stores = stores
        self._lock = threading.Lock()
        self._pending: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])

    def record(self, version_id: int, hits: int, seconds: float) -> None:
        with self._lock:
            figures = self._pending[version_id]
            figures[0] += 1
            figures[1] += hits == 0
            figures[2] += hits
            figures[3] += seconds

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: [0, 0, 0, 0.0])
        if not pending:
            return
        try:
            with self.stores.connection() as conn:
                conn.cursor().executemany(
                    """
                    INSERT INTO version_search_stats AS s (index_version_id, searches, empty, hits, seconds)
                    SELECT id, %s, %s, %s, %s FROM index_versions WHERE id = %s
                    ON CONFLICT (index_version_id) DO UPDATE SET
                        searches = s.searches + EXCLUDED.searches, empty = s.empty + EXCLUDED.empty,
                        hits = s.hits + EXCLUDED.hits, seconds = s.seconds + EXCLUDED.seconds, updated_at = now()
                    """,
                    [(*figures, version_id) for version_id, figures in pending.items()],
                )
        except Exception:
            with self._lock:  # kept for the next poll: an outage loses no count
                for version_id, figures in pending.items():
                    kept = self._pending[version_id]
                    for index, value in enumerate(figures):
                        kept[index] += value
            raise
