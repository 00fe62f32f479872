"""`producer serve-metrics`: the fleet-wide numbers no single worker knows, for Prometheus.

Flower does not show queue length (flower#1173): this exports the broker's queue depth, the
backlog per index version from Postgres, the recent embedding rate and the backlog's ETA, read
fresh on every scrape; and the retrieval quality `producer eval --push-metrics` last measured,
with the threshold the alert rules compare it to (FLEET_EVAL_ALERT_MRR).
"""

import time
from contextlib import closing

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from producer.evaluate import latest_results
from workers.core.broker import queue_depth
from workers.core.constants import EMBED_QUEUE, RATE_WINDOW_S
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, lost, outbox, postgres, progress


class FleetCollector(Collector):
    def __init__(self, settings: FleetSettings):
        self.settings = settings

    def collect(self):
        yield from self._queue_depth()
        with closing(postgres.connect(self.settings)) as conn:
            backlog = GaugeMetricFamily(
                "fleet_backlog_chunks",
                "Chunks per index version and embedding state",
                labels=["index_version", "state"],
            )
            pending_total = 0
            for version in catalog.active_versions(conn):
                counts = progress.progress(conn, version.id)
                pending_total += counts.pending
                for state, value in (
                    ("pending", counts.pending),
                    ("embedded", counts.embedded),
                    ("failed", counts.failed),
                ):
                    backlog.add_metric([version.collection, state], value)
            yield backlog
            rate = progress.recent_rate(conn, RATE_WINDOW_S)
            yield GaugeMetricFamily("fleet_rate_chunks_per_second", "Chunks/s over the recent window", value=rate)
            eta = progress.eta_seconds(pending_total, rate)
            yield GaugeMetricFamily(
                "fleet_eta_seconds",
                "Seconds until the backlog is embedded (NaN while nothing moves)",
                value=float("nan") if eta is None else eta,
            )
            gone_after = self.settings.worker_gone_after_s
            stuck = progress.stuck_workers(conn, self.settings.stuck_after_s, gone_after)
            yield GaugeMetricFamily("fleet_stuck_workers", "Workers holding work without progress", value=len(stuck))
            gone = progress.gone_workers(conn, gone_after)
            yield GaugeMetricFamily("fleet_gone_workers", "Workers silent while holding work", value=len(gone))
            lost_chunks = lost.count_lost(conn, self.settings)
            yield GaugeMetricFamily("fleet_lost_chunks", "Pending chunks whose task was lost", value=lost_chunks)
            yield GaugeMetricFamily(
                "fleet_outbox_rows", "Vector deletions Milvus has not confirmed", value=outbox.pending(conn)
            )
            yield from self._quality(conn)

    def _quality(self, conn):
        labels = ["index", "mode"]
        mrr = GaugeMetricFamily("fleet_eval_mrr", "MRR@10 of the last `producer eval --push-metrics`", labels=labels)
        hit_at_5 = GaugeMetricFamily("fleet_eval_hit_at_5", "Hit@5 of the last eval run", labels=labels)
        age = GaugeMetricFamily("fleet_eval_age_seconds", "Seconds since the last eval run", labels=labels)
        now = time.time()
        for result in latest_results(conn):
            mrr.add_metric([result.index_name, result.mode], result.mrr)
            hit_at_5.add_metric([result.index_name, result.mode], result.hit_at_5)
            age.add_metric([result.index_name, result.mode], now - result.created_at.timestamp())
        yield from (mrr, hit_at_5, age)
        yield GaugeMetricFamily(
            "fleet_eval_alert_mrr",
            "MRR@10 below which FleetRetrievalQualityLow fires (FLEET_EVAL_ALERT_MRR)",
            value=self.settings.eval_alert_mrr,
        )

    def _queue_depth(self):
        depth = GaugeMetricFamily("fleet_queue_depth", "Task messages waiting in the broker", labels=["queue"])
        waiting = queue_depth(self.settings)
        if waiting is not None:
            depth.add_metric([EMBED_QUEUE], waiting)
        yield depth


def serve(settings: FleetSettings, port: int) -> None:
    """Serve /metrics on `port` until interrupted."""
    REGISTRY.register(FleetCollector(settings))
    start_http_server(port)
    while True:
        time.sleep(3600)
