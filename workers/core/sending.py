"""Send chunks to the workers: record the send in Postgres, then publish the task messages.

Every sender goes through here — `producer ingest`, `producer retry`, `migrate`, the reconciler —
so that each message carries the time it was recorded as sent (Postgres's clock), which the
reconciler compares with what the workers have taken from the broker. A broker that cannot be
reached raises ServiceUnavailable after a short retry; the chunks stay pending in Postgres and
the reconciler sends them once it is back.
"""

import logging

import psycopg
from celery import Celery

from workers.core.constants import EMBED_QUEUE, EMBED_TASK
from workers.core.contracts import EmbedTask
from workers.core.errors import ServiceUnavailable
from workers.core.failures import is_outage
from workers.core.stores import progress

log = logging.getLogger(__name__)

# A broker blip is ridden out; a broker down gives up within seconds (the reconciler sends later).
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def batches(chunk_ids: list[str], size: int) -> list[list[str]]:
    return [chunk_ids[start : start + size] for start in range(0, len(chunk_ids), size)]


def make_tasks(version_id: int, chunk_ids: list[str], size: int) -> list[EmbedTask]:
    """Tasks of at most `size` chunks (for an engine in this process: no send time)."""
    return [EmbedTask(version_id, batch) for batch in batches(chunk_ids, size)]


def send(app: Celery, conn: psycopg.Connection, version_id: int, chunk_ids: list[str], task_chunks: int) -> int:
    """Publish tasks of `task_chunks` chunks for `version_id`; returns how many chunks were sent."""
    if not chunk_ids:
        return 0
    sent_at = progress.mark_sent(conn, version_id, chunk_ids)
    for batch in batches(chunk_ids, task_chunks):
        task = EmbedTask(version_id, batch, sent_at)
        try:
            app.send_task(
                EMBED_TASK, kwargs=task.to_kwargs(), queue=EMBED_QUEUE, retry=True, retry_policy=_PUBLISH_RETRY
            )
        except Exception as err:
            if not is_outage(err):
                raise
            raise ServiceUnavailable(f"the broker cannot be reached ({err})") from err
    return len(chunk_ids)
