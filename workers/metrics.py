"""Prometheus metrics of a worker, served on FLEET_METRICS_PORT (`/metrics`), with `/healthz`.

The engine records what it does; the Grafana dashboard in ops/grafana reads these names.
Queue depth, backlog and ETA are the exporter's (`producer serve-metrics`), not a worker's.
`/healthz` answers 200 while the worker itself is sound and 503 (with the reason) when it is not:
what a container's liveness and readiness probes ask.
"""

import threading
from collections.abc import Callable
from wsgiref.simple_server import make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

CHUNKS_EMBEDDED = Counter("fleet_chunks_embedded", "Chunks embedded and stored in both sinks")
TOKENS_EMBEDDED = Counter("fleet_tokens_embedded", "Tokens run through the model (without padding)")
BATCH_SIZE = Histogram("fleet_batch_size", "Chunks per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
BATCH_PADDING = Histogram(
    "fleet_batch_padding_ratio",
    "Share of a batch's padded tokens that are padding",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75),
)
FORWARD_SECONDS = Histogram(
    "fleet_forward_seconds",
    "Seconds of one forward pass (device time, copy out included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_SECONDS = Histogram(
    "fleet_sink_seconds", "Seconds of one bulk write", ["sink"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
)
FAILURES = Counter("fleet_failures", "Chunks recorded as failed, and stage errors", ["kind"])
HEARTBEAT_FAILURES = Counter(
    "fleet_heartbeat_failures", "Heartbeats that could not be written, by failure class", ["failure"]
)
GPU_MEMORY = Gauge("fleet_gpu_memory_bytes", "Peak device memory allocated by the model")
MODEL_LOADED = Gauge("fleet_model_loaded", "1 for each model this worker has loaded", ["model"])
ATTENTION_PATH = Gauge(
    "fleet_attention_path",
    "1 for the attention path chosen at start (packed kernel or padded), with why",
    ["path", "reason"],
)
ATTENTION_FALLBACKS = Counter(
    "fleet_attention_fallbacks", "Attention kernels given up after failing on a batch", ["kernel"]
)


Health = Callable[[], tuple[bool, str]]


def serve(port: int, health: Health | None = None) -> None:
    """Serve /metrics and /healthz on `port` (0: not at all), from a daemon thread."""
    if not port:
        return
    metrics_app = make_wsgi_app()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        healthy, reason = health() if health else (True, "ok")
        start_response("200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [reason.encode() + b"\n"]

    server = make_server("0.0.0.0", port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
