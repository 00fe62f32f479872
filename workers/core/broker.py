"""The broker as every process sees it: a Celery app that only sends, and the queue's depth.

`broker_app` is what senders use (`producer ingest`, `migrate`, the reconciler): the delivery
settings that every message needs, and nothing else — it registers no task, builds no engine and
connects no signal. The worker's app (`workers.celery_app`) is this one plus the task.

Celery on Redis keeps a queue's waiting messages in a Redis list named after it (messages a
worker has taken are not in it); `queue_depth` reads it with a short timeout, and callers treat
None (not Redis, or not reachable) as "unknown".
"""

import logging

from celery import Celery

from workers.core.constants import EMBED_QUEUE, EMBED_TASK
from workers.core.errors import ConfigError
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)


def broker_app(settings: FleetSettings) -> Celery:
    """A Celery app to send embed tasks with: the broker and how messages travel, no task."""
    if settings.broker_url is None:
        raise ConfigError("FLEET_BROKER_URL is not set: set it (e.g. redis://127.0.0.1:6379/0) to use workers")
    app = Celery("fleet", broker=settings.broker_url.get_secret_value(), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=EMBED_QUEUE,
        task_routes={EMBED_TASK: {"queue": EMBED_QUEUE}},
        # Longer than any prefetch + run time, else Redis redelivers work still in progress. Lost
        # work does not wait for it: the reconciler sends it again. Kombu sweeps for such tasks
        # every 10 s × throttle (10 by default: 100 s); sweep every 10 s. Socket timeouts make a
        # Redis that stopped answering an error instead of a hang.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
            "socket_keepalive": True,
            "health_check_interval": 30,
        },
        broker_connection_timeout=settings.redis_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker outage is waited out
        task_send_sent_event=True,
    )
    return app


def queue_depth(settings: FleetSettings) -> int | None:
    """Messages waiting in the embed queue, or None when that cannot be told."""
    if settings.broker_url is None:
        return None
    url = settings.broker_url.get_secret_value()
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(
        url, socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s
    )
    try:
        return int(client.llen(EMBED_QUEUE))
    except redis.RedisError as err:
        log.debug("cannot read the queue depth: %s", err)
        return None
    finally:
        client.close()
