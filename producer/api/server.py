"""Run the app under uvicorn: one process, one model; scale out with replicas behind a balancer."""

import contextlib
import errno
import logging
import os
import socket

import uvicorn

from producer.api.app import create_app
from producer.api.protocol import bounded_http
from workers.core.errors import ConfigError
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)

# Seconds given to requests in flight when the service is stopped (Kubernetes allows 30).
GRACEFUL_SHUTDOWN_S = 10


def serve(settings: FleetSettings, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    _check_free(host, port)
    # Read when torch loads (with the model, later): threads of a forward pass that finish early
    # sleep instead of spinning. Spinning takes the cores from the event loop and the stores'
    # clients, and when cores are short a pass waiting for a descheduled thread runs many times
    # slower (measured: 20 ms queries took 200 ms beside another busy process on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,  # ours (workers.core.logs); uvicorn's access log only at DEBUG: metrics count requests
        access_log=settings.log_level == "DEBUG",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Longer than the idle timeout of the load balancers in front (60 s is common): an idle
        # connection is closed by them, never under a request they are forwarding.
        timeout_keep_alive=settings.api_keep_alive_s,  # type: ignore[arg-type]  # uvicorn takes a float too
        # httptools, with the bounds on headers that uvicorn lacks (protocol.py); the h11 limit
        # too, should anyone run the app under uvicorn's h11 protocol instead.
        http=bounded_http(settings.api_max_header_bytes, settings.api_header_timeout_s),
        h11_max_incomplete_event_size=settings.api_max_header_bytes,
    )
    # pymilvus and the pool log a traceback per failed call during an outage; the service says it once.
    for name in ("pymilvus", "pymilvus.milvus_client", "psycopg.pool"):
        logging.getLogger(name).setLevel(logging.CRITICAL if name.startswith("pymilvus") else logging.ERROR)
    log.info("query service on http://%s:%d (OpenAPI docs at /docs)", host, port)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again; for a service
    # that is the normal way to stop, not an interruption.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    log.info("query service stopped")


def _check_free(host: str, port: int) -> None:
    """Say plainly that the address is taken, before loading a model for nothing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            reason = "is in use" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err.strerror})"
            raise ConfigError(
                f"{host}:{port} {reason}: pass --host/--port or set FLEET_API_HOST/FLEET_API_PORT"
            ) from err
