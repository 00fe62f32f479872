"""The broker seen from outside Celery: how many task messages wait in the embed queue.

Celery on Redis keeps a queue's waiting messages in a Redis list named after it (messages a
worker has taken are not in it). Read with a short timeout: callers treat None (not Redis, or
not reachable) as "unknown".
"""

import logging

from workers.constants import EMBED_QUEUE
from workers.settings import FleetSettings

log = logging.getLogger(__name__)


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
