"""The query service's parts, wired: stores, the live index follower, the key ring, the cache and
the two micro-batchers (the model's forward passes; Milvus searches and the Postgres rows).

Routes call `search` and `embed`; both take the live pair once, at the start of a request. A
search is `producer search`'s own: the query NFC-normalised, embedded with the version's model and
prompt and fitted to its dimension (not in the keyword mode, which needs no model), then
`producer.search.search_queries` — only batched with others of its version, level and mode.

The model's passes have two lanes: searches first, bulk embeddings after. A search waits for at
most the pass already running (FLEET_API_BATCH_TOKENS), never for the embeddings queued; bulk
requests are counted in tokens, bounded per request and per key in flight (budget.py).
"""

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from fastapi import HTTPException

from producer.api.audit import SearchLog
from producer.api.auth import KeyRing
from producer.api.batching import MicroBatcher
from producer.api.budget import TokenBudget
from producer.api.canary import CanaryFollower, SearchFigures
from producer.api.embedder import (
    Embedded,
    EmbedItem,
    VectorCache,
    as_query,
    embed_batch,
    estimated_tokens,
    token_ids,
)
from producer.api.live import Live, LiveIndex
from producer.api.metrics import ApiMetrics
from producer.api.ratelimit import RateLimiter
from producer.api.stores import Stores, as_unavailable, describe
from producer.search import SearchHit, check_weights, make_query, normalized, resolve_mode, search_queries
from workers.core.access import AccessLevel
from workers.core.constants import KEYWORD
from workers.core.errors import InvalidInput, ServiceUnavailable
from workers.core.settings import FleetSettings
from workers.core.stores import audit, milvus
from workers.core.stores.milvus import Weights

log = logging.getLogger(__name__)

# Queries in one Milvus request (one filter: same version and level).
SEARCH_BATCH = 64
WARM_TEXTS = ["warm-up", "What is the annual leave policy?", "Chính sách nghỉ phép năm"]
WARM_TIMEOUT_S = 600.0
# The model's lanes: a search's pass goes before every bulk embedding waiting.
SEARCH_LANE, BULK_LANE = 0, 1
# How often the useful rate per version is read from Postgres (an aggregate over the feedback kept),
# unless this replica recorded feedback since (then at the next poll).
USEFUL_RATE_EVERY_S = 60.0
# A text's place in the cache: (index version, "query" or "document", text).
CacheKey = tuple[int, str, str]
Found = dict[CacheKey, Embedded | None]


@dataclass(frozen=True)
class Answer:
    live: Live  # the version that answered
    mode: str  # the mode that ran
    hits: list[SearchHit]
    search_id: str | None  # its record in the search log (None: FLEET_SEARCH_LOG=off)


@dataclass(frozen=True, eq=False)
class SearchItem:
    live: Live
    query: milvus.Query
    level: AccessLevel
    top_k: int
    mode: str
    weights: Weights | None = None

    @property
    def group(self) -> tuple:
        """Items of one group go to Milvus in one request: same collection, filter and ranking."""
        return (self.live.version.id, int(self.level), self.mode, self.weights)


class QueryService:
    def __init__(self, settings: FleetSettings, metrics: ApiMetrics):
        self.settings = settings
        self.metrics = metrics
        self.stores = Stores(settings)
        self.keys = KeyRing(self.stores)
        self.limits = RateLimiter(settings)
        self.cache = VectorCache(settings.api_cache_size)
        self.live = LiveIndex(self.stores, settings.device, settings.api_threads, self._warm, self._switched)
        self.canary = CanaryFollower(self.stores, self.live.load)
        self.figures = SearchFigures(self.stores)
        self.search_log = SearchLog(settings, self.stores, metrics)
        self.embedder: MicroBatcher[EmbedItem, Embedded] = MicroBatcher(
            "embed",
            lambda items: embed_batch(items, settings.api_batch_tokens),
            budget=settings.api_batch_tokens,
            cost=estimated_tokens,
            wait_s=settings.api_batch_wait_ms / 1000,
            on_batch=metrics.batch_observer("embed"),
            lanes=2,
        )
        self.budget = TokenBudget(settings.api_max_request_tokens, settings.api_max_key_tokens_in_flight)
        self.searcher: MicroBatcher[SearchItem, list[SearchHit]] = MicroBatcher(
            "search",
            self._search_batch,
            budget=SEARCH_BATCH,
            on_batch=metrics.batch_observer("search"),
        )
        self._tasks: list[asyncio.Task] = []
        self._problems: dict[str, str] = {}  # what each poll last failed with, to log it once
        self._useful_read_at = -USEFUL_RATE_EVERY_S

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Keep the keys fresh from now on; load the live model before serving, then follow it."""
        self._tasks = [asyncio.create_task(self._poll(self.keys.refresh, "reading API keys"))]
        # A model can take long to load (a download): the keys go on being read meanwhile.
        await self._poll_once(self._follow_live, "following the live index")
        self._tasks.append(asyncio.create_task(self._poll(self._follow_live, "following the live index", first=False)))
        self._tasks.append(asyncio.create_task(self._poll(self.canary.tick, "following the canary")))
        for flush, what in ((self.figures.flush, "recording search figures"), (self.search_log.flush, "search log")):
            self._tasks.append(asyncio.create_task(self._poll(flush, what, first=False)))
        self._tasks.append(asyncio.create_task(self._poll(self._read_useful_rates, "reading useful rates")))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._poll_once(self.figures.flush, "recording search figures")
        await self._poll_once(self.search_log.flush, "search log")
        self.embedder.close()
        self.searcher.close()
        self.stores.close()
        await self.limits.close()

    async def _poll(self, step, what: str, first: bool = True) -> None:
        if first:
            await self._poll_once(step, what)
        while True:
            await asyncio.sleep(self.settings.api_poll_s)
            await self._poll_once(step, what)

    async def _poll_once(self, step, what: str) -> None:
        try:
            await asyncio.to_thread(step)
        except Exception as err:  # an outage: said once while it lasts, retried at every poll
            problem = describe(err)
            if self._problems.get(what) != problem:
                log.warning("%s: %s", what, problem)
            self._problems[what] = problem
        else:
            if self._problems.pop(what, None):
                log.info("%s: recovered", what)

    def _read_useful_rates(self) -> None:
        if time.monotonic() - self._useful_read_at < USEFUL_RATE_EVERY_S:
            return
        with self.stores.connection() as conn:
            rates = audit.useful_rates(conn)
        self._useful_read_at = time.monotonic()
        for index_name, (relevant, marked) in rates.items():
            self.metrics.useful_rate.labels(index_name).set(relevant / marked)

    def _follow_live(self) -> None:
        try:
            self.live.tick()
        finally:
            self.metrics.behind.set(1 if self.live.behind else 0)

    # -- what routes call -----------------------------------------------------------------------

    def current(self) -> Live:
        """The pair to answer with; 503 with the reason when there is none, or when the live
        version could not be loaded (the previous one no longer receives new chunks)."""
        return self.live.serving()

    async def search(
        self,
        query: str,
        level: AccessLevel,
        top_k: int,
        caller: str,
        mode: str | None = None,
        weights: Weights | None = None,
    ) -> Answer:
        """Answered by the live version, or by the canary for the keys it takes (`caller`: the
        key's name), in `mode` (default: that version's); counted for the version that answered
        and recorded in the search log (before the answer goes with FLEET_AUDIT_REQUIRED)."""
        started = time.perf_counter()
        live = self.current()
        live = self.canary.for_caller(caller) or live
        mode = resolve_mode(live.version, mode)
        check_weights(mode, weights)
        text = normalized(query)
        vector = None if mode == KEYWORD else (await self.vectors(live, [text], "query", caller))[0].vector
        item = SearchItem(live, make_query(text, vector), level, top_k, mode, weights)
        hits = (await self.searcher.run_many([item], owner=caller))[0]
        seconds = time.perf_counter() - started
        record = (caller, level, live.version.collection, mode, query, top_k, seconds, hits)
        if self.search_log.required:
            search_id = await asyncio.to_thread(self.search_log.record_search, *record)
        else:
            search_id = self.search_log.record_search(*record)
        self.figures.record(live.version.id, len(hits), seconds)
        self.metrics.searches.labels(live.version.collection).inc()
        if not hits:
            self.metrics.empty_searches.labels(live.version.collection).inc()
        return Answer(live, mode, hits, search_id)

    async def feedback(self, caller: str, search_id: str, chunk_id: str, relevant: bool, note: str | None) -> None:
        """Store a verdict on one hit of one of this key's searches: 404 for a search not recorded,
        403 for another key's, 422 for a chunk it did not return (feedback cannot probe chunk ids)."""
        if self.search_log.mode == "off":
            raise HTTPException(404, "the search log is off (FLEET_SEARCH_LOG=off): no search can take feedback")
        found = await asyncio.to_thread(self.search_log.find, search_id)
        if found is None:  # made on another replica a moment ago: written at its next poll
            await asyncio.sleep(self.settings.api_poll_s)
            found = await asyncio.to_thread(self.search_log.find, search_id)
        if found is None:
            raise HTTPException(
                404,
                f"no search {search_id} is recorded: give the search_id of a search made within "
                f"{self.settings.search_log_days} days (FLEET_SEARCH_LOG_DAYS)",
            )
        if found.key_name != caller:
            raise HTTPException(403, "this search was made with another key: feedback comes from the key that searched")
        if chunk_id not in found.chunk_ids:
            raise HTTPException(422, f"chunk {chunk_id!r} is not among this search's hits: feedback is on its hits")
        await asyncio.to_thread(self.search_log.record_feedback, search_id, chunk_id, relevant, note)
        self.metrics.feedback.labels(found.index_name, str(relevant).lower()).inc()
        self._useful_read_at = -USEFUL_RATE_EVERY_S  # the useful rates read again at the next poll

    async def embed(
        self, caller: str, texts: list[str], kind: str, dimensions: int | None
    ) -> tuple[Live, list[Embedded]]:
        """Bulk embeddings for the key named `caller`: counted in tokens (413, 429 over the
        budgets), then embedded in the bulk lane, behind every search."""
        live = self.current()
        if dimensions is not None and dimensions > live.version.dim:
            raise InvalidInput(f"dimensions {dimensions} is above the live index's {live.version.dim}")
        keys, found, missing = self._cached(live, texts, kind)
        read = [self._as_read(live, key[2], kind) for key in missing]
        # Counted before anything waits for the model: a refusal costs the tokenizer only.
        ids = await asyncio.to_thread(token_ids, live.encoder, read)
        tokens = {key: embedded.tokens for key, embedded in found.items() if embedded is not None}
        tokens |= {key: len(sequence) for key, sequence in zip(missing, ids, strict=True)}
        with self.budget.hold(caller, sum(tokens[key] for key in keys)):
            dim = live.version.dim
            items = [EmbedItem(live.encoder, dim, text, sequence) for text, sequence in zip(read, ids, strict=True)]
            await self._fill(found, missing, items, BULK_LANE, caller)
        return live, [found[key] for key in keys]  # type: ignore[misc]

    async def vectors(self, live: Live, texts: list[str], kind: str, caller: str = "") -> list[Embedded]:
        """Each text's vector in the live version's space: from the cache, else embedded in the
        search lane (taking turns with other keys')."""
        keys, found, missing = self._cached(live, texts, kind)
        items = [EmbedItem(live.encoder, live.version.dim, self._as_read(live, key[2], kind)) for key in missing]
        await self._fill(found, missing, items, SEARCH_LANE, caller)
        return [found[key] for key in keys]  # type: ignore[misc]

    def ready(self) -> list[str]:
        """Why the service cannot answer now (blocking: asks both stores)."""
        problems = [] if self.live.current else [f"no model loaded: {self.live.problem}"]
        if self.live.behind:
            problems.append(self.live.behind)
        if not (self.embedder.alive and self.searcher.alive):
            problems.append("a batch thread has stopped")
        try:
            self.keys.check_fresh()
        except ServiceUnavailable as err:
            problems.append(str(err))
        return problems + self.stores.check()

    # -- inside -----------------------------------------------------------------------------------

    def _cached(self, live: Live, texts: list[str], kind: str) -> tuple[list[CacheKey], Found, list[CacheKey]]:
        """The cache keys of `texts`, what the cache holds for each, and the keys it lacks (a text
        repeated is embedded once)."""
        keys = [(live.version.id, kind, text) for text in texts]
        found = {key: self.cache.get(key) for key in keys}
        missing = [key for key, vector in found.items() if vector is None]
        self.metrics.cache_hits.inc(len(found) - len(missing))
        self.metrics.cache_misses.inc(len(missing))
        return keys, found, missing

    async def _fill(
        self, found: Found, missing: list[CacheKey], items: list[EmbedItem], lane: int, caller: str
    ) -> None:
        """Embed `items` (the texts of `missing`) in `lane` for `caller`; record them in `found` and the cache."""
        if missing:
            for key, embedded in zip(missing, await self.embedder.run_many(items, lane, caller), strict=True):
                found[key] = embedded
                self.cache.put(key, embedded)

    @staticmethod
    def _as_read(live: Live, text: str, kind: str) -> str:
        return as_query(live.encoder, text) if kind == "query" else text

    def _search_batch(self, items: list[SearchItem]) -> list[list[SearchHit] | BaseException]:
        """One Milvus request per (version, level, mode) among `items`, and the chunks' rows from Postgres."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[item.group].append(index)
        results: list[list[SearchHit] | BaseException] = [[] for _ in items]
        client = self.stores.milvus()
        with self.stores.connection() as conn:
            for indices in groups.values():
                first = items[indices[0]]
                top_k = max(items[index].top_k for index in indices)
                queries = [items[index].query for index in indices]
                try:
                    found = self._search_group(conn, client, first, queries, top_k)
                except Exception as err:
                    for index in indices:
                        results[index] = as_unavailable(err) or err
                    continue
                for index, hits in zip(indices, found, strict=True):
                    results[index] = hits[: items[index].top_k]
        return results

    def _search_group(self, conn, client, item: SearchItem, queries: list[milvus.Query], top_k: int):
        version, timeout = item.live.version, self.settings.api_store_timeout_s

        def run():
            return search_queries(conn, client, version, queries, item.level, top_k, item.mode, item.weights, timeout)

        try:
            return run()
        except Exception as err:
            if not any(word in str(err).lower() for word in ("released", "not loaded")):
                raise
            # A restarted Milvus (Lite) comes back with collections released: load, then once more.
            client.load_collection(version.collection, timeout=timeout)
            return run()

    def _warm(self, live: Live) -> None:
        """A forward pass through the batcher and a search: the first request pays neither."""
        items = [EmbedItem(live.encoder, live.version.dim, as_query(live.encoder, text)) for text in WARM_TEXTS]
        futures = [self.embedder.submit(item) for item in items]
        vectors = [future.result(WARM_TIMEOUT_S).vector for future in futures]
        queries = [make_query(text, vector) for text, vector in zip(WARM_TEXTS, vectors, strict=True)]
        with self.stores.connection() as conn:
            client, timeout = self.stores.milvus(), self.settings.api_store_timeout_s
            mode = live.version.default_mode
            search_queries(conn, client, live.version, queries, AccessLevel.public, 1, mode, timeout=timeout)

    def _switched(self, previous: Live | None, live: Live) -> None:
        self.metrics.live_version.set(live.version.id)
        self.metrics.live_info.clear()
        self.metrics.live_info.labels(live.version.collection, live.version.model, str(live.version.dim)).set(1)
        if previous is not None:
            self.metrics.switches.inc()
