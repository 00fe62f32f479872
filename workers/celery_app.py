"""The Celery app: delivery settings that lose nothing, and the embed task.

A task is acknowledged late, after its chunks are in Milvus and marked in Postgres; a worker
killed mid-batch leaves it unacknowledged and Redis delivers it again. Each delivery counts
an attempt per chunk (in Postgres), so a poison chunk ends in the failures table, not in a loop.
"""

import logging
import os
import signal

from celery import Celery, signals

from workers import metrics
from workers.constants import EMBED_QUEUE, EMBED_TASK
from workers.contracts import EmbedTask
from workers.engine import EmbedEngine
from workers.errors import ConfigError
from workers.settings import FleetSettings

log = logging.getLogger(__name__)

# 5, 10, 20, … 300 s: FLEET_MAX_ATTEMPTS=8 deliveries ride out about ten minutes of an outage.
RETRY_BASE_DELAY_S = 5
MAX_RETRY_DELAY_S = 300


def create_app(settings: FleetSettings) -> Celery:
    """The fleet's Celery app; the producer uses it to send, workers to consume."""
    if settings.broker_url is None:
        raise ConfigError("FLEET_BROKER_URL is not set: set it (e.g. redis://127.0.0.1:6379/0) to run workers")
    app = Celery("fleet", broker=settings.broker_url.get_secret_value(), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=EMBED_QUEUE,
        task_routes={EMBED_TASK: {"queue": EMBED_QUEUE}},
        # Longer than any prefetch + run time, else Redis redelivers work still in progress;
        # also how long the tasks of a killed worker wait before another worker gets them.
        # Kombu sweeps for such tasks every 10 s × throttle (10 by default: 100 s); sweep every 10 s.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s, "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        # Threads, not prefork: CUDA breaks in forked children, and the engine merges the
        # tasks that the pool's threads hold into full batches.
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=1,
        worker_soft_shutdown_timeout=60,
        worker_enable_soft_shutdown_on_idle=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    _register_embed_task(app, settings)
    return app


def _register_embed_task(app: Celery, settings: FleetSettings) -> None:
    engine = EmbedEngine(settings)

    @app.task(name=EMBED_TASK, bind=True, max_retries=None)
    def embed(self, index_version: int, chunk_ids: list[str]) -> dict:
        """Embed chunks for an index version; returns counts (embedded, skipped, failed)."""
        task = EmbedTask(index_version=index_version, chunk_ids=chunk_ids)  # a malformed message is dropped
        try:
            return engine.submit(task).result().to_dict()
        except Exception as err:
            if not engine.healthy:
                # A stage thread died: this worker can do no more. Stop it (warm shutdown: what it
                # holds goes back to the queue) so that its supervisor starts a fresh one.
                log.critical("the embed engine is broken (%s): shutting this worker down", err)
                os.kill(os.getpid(), signal.SIGTERM)
            # Every failure retries: a service down heals, a schema behind heals after `migrate db`,
            # and a fault that never heals ends when its chunks exceed FLEET_MAX_ATTEMPTS
            # deliveries and are recorded as failed — never dropped with the chunks left pending.
            delay = min(MAX_RETRY_DELAY_S, RETRY_BASE_DELAY_S * 2**self.request.retries)
            log.warning("task for %d chunks failed (%s); retrying in %ds", len(chunk_ids), err, delay)
            raise self.retry(exc=err, countdown=delay) from err

    @signals.celeryd_init.connect(weak=False)
    def name_engine(sender: str, **_: object) -> None:
        engine.name = sender  # the node name (worker@host): heartbeats and stuck reports use it

    @signals.worker_ready.connect(weak=False)
    def start_engine(**_: object) -> None:
        metrics.serve(settings.metrics_port, health=engine.health)
        log.info("preloading %s; metrics on :%s/metrics", settings.model, settings.metrics_port)
        engine.start().preload(settings.model)

    @signals.worker_shutdown.connect(weak=False)
    def stop_engine(**_: object) -> None:
        engine.close()

    app.embed_engine = engine
