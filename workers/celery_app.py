"""The Celery app: delivery settings that lose nothing, and the embed task.

A task is acknowledged late, after its chunks are in Milvus and marked in Postgres; a worker
killed mid-batch leaves it unacknowledged, and the reconciler (or, later, Redis) sends it again.
Each delivery counts an attempt per chunk (in Postgres), so a poison chunk ends in the failures
table, not in a loop; an outage gives its attempt back and is waited out, however long.
"""

import logging
import os
import signal
from contextlib import closing

from celery import Celery, signals

from workers import metrics
from workers.core.broker import broker_app
from workers.core.constants import EMBED_TASK
from workers.core.contracts import EmbedTask
from workers.core.errors import ServiceUnavailable
from workers.core.failures import Failure, classify, explain
from workers.core.settings import FleetSettings
from workers.core.stores import postgres, progress
from workers.embedding import resolve_model
from workers.engine import EmbedEngine
from workers.reconciler import Reconciler

log = logging.getLogger(__name__)

# 5, 10, 20, … s between deliveries: up to half a minute while a service is out (the work resumes
# soon after it returns), up to five for a failure of the work itself (attempts bound those).
RETRY_BASE_DELAY_S = 5
MAX_OUTAGE_DELAY_S = 30
MAX_RETRY_DELAY_S = 300


def retry_delay(retries: int, outage: bool) -> int:
    return min(MAX_OUTAGE_DELAY_S if outage else MAX_RETRY_DELAY_S, RETRY_BASE_DELAY_S * 2**retries)


def create_app(settings: FleetSettings) -> Celery:
    """The worker's Celery app: the senders' app (`broker_app`), how a worker consumes, the task."""
    app = broker_app(settings)
    app.conf.update(
        # Threads, not prefork: CUDA breaks in forked children, and the engine merges the
        # tasks that the pool's threads hold into full batches.
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_prefetch_multiplier=1,
        worker_soft_shutdown_timeout=60,
        worker_enable_soft_shutdown_on_idle=True,
        worker_send_task_events=True,
    )
    _register_embed_task(app, settings)
    return app


def _record_resent(settings: FleetSettings, task: EmbedTask) -> None:
    """The retry goes out as a new message now: its chunks are recorded as sent now. Otherwise,
    between this message and the worker's next heartbeat listing the retry as held, the reconciler
    takes them for lost (sent long ago, held by nobody) and sends them again, and the two deliveries
    spend the chunks' attempts between them. The message keeps its first send time: it tells the
    reconciler how far the workers are through the queue, which a retry says nothing about."""
    try:
        with closing(postgres.open_connection(settings)) as conn:
            progress.mark_sent(conn, task.index_version, task.chunk_ids)
    except Exception as err:  # Postgres is what is out: a second delivery is the worst that follows
        log.info("could not record the retry of %d chunks as sent (%s)", len(task.chunk_ids), explain(err))


def _register_embed_task(app: Celery, settings: FleetSettings) -> None:
    engine = EmbedEngine(settings)
    reconciler = Reconciler(settings, app)

    @app.task(name=EMBED_TASK, bind=True, max_retries=None)
    def embed(self, index_version: int, chunk_ids: list[str], sent_at: float | None = None) -> dict:
        """Embed chunks for an index version; returns counts (embedded, skipped, failed)."""
        task = EmbedTask(index_version, chunk_ids, sent_at)  # a malformed message is dropped
        try:
            return engine.submit(task).result(timeout=settings.task_timeout_s).to_dict()
        except TimeoutError as err:
            error: Exception = ServiceUnavailable(
                f"no result within FLEET_TASK_TIMEOUT_S={settings.task_timeout_s:.0f}s"
            )
            error.__cause__ = err
        except Exception as err:
            error = err
        # Every failure retries: an outage heals (and spends no attempt), a schema behind heals
        # after `migrate db`, and a fault that never heals ends when its chunks exceed
        # FLEET_MAX_ATTEMPTS deliveries and are recorded as failed — never dropped with the
        # chunks left pending.
        failure = classify(error)
        delay = retry_delay(self.request.retries, failure is Failure.OUTAGE)
        log.warning(
            "task for %d chunks failed (%s: %s); retrying in %ds", len(chunk_ids), failure, explain(error), delay
        )
        _record_resent(settings, task)
        raise self.retry(exc=error, countdown=delay)

    def shut_down() -> None:
        # A stage thread died: this worker can do no more. Stop it (warm shutdown: what it holds
        # goes back to the queue) so that its supervisor starts a fresh one.
        log.critical("the embed engine is broken: shutting this worker down")
        os.kill(os.getpid(), signal.SIGTERM)

    engine.on_broken = shut_down

    @signals.celeryd_init.connect(weak=False)
    def name_engine(sender: str, **_: object) -> None:
        engine.name = sender  # the node name (worker@host): heartbeats and stuck reports use it

    @signals.worker_init.connect(weak=False)
    def load_model(**_: object) -> None:
        # Before the worker takes any task: a model that cannot load stops it with one clear line.
        try:
            resolve_model(settings.model)
            engine.start().preload(settings.model, settings.quantize)
        except Exception as err:
            log.critical(
                "cannot load the model FLEET_MODEL=%s (%s): fix FLEET_MODEL and start again", settings.model, err
            )
            raise SystemExit(2) from err

    @signals.worker_ready.connect(weak=False)
    def start_serving(**_: object) -> None:
        metrics.serve(settings.metrics_port, health=engine.health)
        log.info("%s loaded; metrics on :%s/metrics", settings.model, settings.metrics_port)
        if settings.reconcile_s:
            reconciler.start()

    @signals.worker_shutdown.connect(weak=False)
    def stop_engine(**_: object) -> None:
        if settings.reconcile_s:
            reconciler.stop()
        engine.close()

    app.embed_engine = engine
    app.reconciler = reconciler
