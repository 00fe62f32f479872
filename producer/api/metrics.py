"""The service's Prometheus metrics (GET /metrics), in a registry of its own per app.

Request latency by route template (never the raw path: a scan of unknown paths must not make a
series each) and status; batch sizes of the model and of Milvus; query-vector cache hits and
misses; which index version is live, and whether this replica is stuck behind it.
"""

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "fleet_api_request_seconds",
            "Seconds from request to response, by route and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fleet_api_batch_size",
            "Texts per forward pass (stage=embed) and queries per Milvus search (stage=search)",
            ["stage"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "fleet_api_batch_seconds",
            "Seconds per batch: a query forward pass (stage=embed), a Milvus search and its rows (stage=search)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "fleet_api_cache_hits", "Texts whose vector came from the query cache", registry=self.registry
        )
        self.cache_misses = Counter("fleet_api_cache_misses", "Texts that had to be embedded", registry=self.registry)
        self.live_version = Gauge(
            "fleet_api_live_index_version", "Id of the index version being served (0: none yet)", registry=self.registry
        )
        self.live_info = Gauge(
            "fleet_api_live_index_info", "The index being served (1)", ["name", "model", "dim"], registry=self.registry
        )
        self.behind = Gauge(
            "fleet_api_live_index_behind",
            "1 while the live index version cannot be loaded (the replica answers 503), else 0",
            registry=self.registry,
        )
        # By the version that answered: the live one, or a canary for its share of the keys.
        self.searches = Counter("fleet_api_searches", "Searches answered", ["index"], registry=self.registry)
        self.empty_searches = Counter(
            "fleet_api_empty_searches", "Searches answered with no hit", ["index"], registry=self.registry
        )
        self.switches = Counter(
            "fleet_api_index_switches", "Switches to another live index version", registry=self.registry
        )
        self.search_log_dropped = Counter(
            "fleet_api_search_log_dropped",
            "Search records and audit events dropped because the buffer was full (Postgres too slow or away)",
            registry=self.registry,
        )
        self.search_log_waiting = Gauge(
            "fleet_api_search_log_waiting", "Search records and audit events not yet written", registry=self.registry
        )
        self.feedback = Counter(
            "fleet_api_feedback", "Feedback on hits received", ["index", "relevant"], registry=self.registry
        )
        # From Postgres: every replica's feedback, over the searches kept (FLEET_SEARCH_LOG_DAYS).
        self.useful_rate = Gauge(
            "fleet_api_useful_rate",
            "Share of the hits given feedback that were marked relevant, per index version (all replicas)",
            ["index"],
            registry=self.registry,
        )

    def batch_observer(self, stage: str) -> Callable[[int, float], None]:
        size, seconds = self.batch_size.labels(stage), self.batch_seconds.labels(stage)

        def observe(count: int, took: float) -> None:
            size.observe(count)
            seconds.observe(took)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware timing every HTTP request, refusals before the route included."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            self.metrics.request_seconds.labels(
                getattr(route, "path", "unmatched"), scope["method"], str(status)
            ).observe(time.perf_counter() - started)
