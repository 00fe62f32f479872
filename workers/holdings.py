"""The tasks a worker holds: taken from the broker and not finished, with their chunks.

Its heartbeat writes them to Postgres, so that the reconciler knows which pending chunks a live
worker still has in hand (and leaves them alone), and the send time of the newest message this
worker has taken: the broker hands messages out in the order they were sent, so a pending chunk
sent well before it, and held by no live worker, has lost its task.

Celery's own bookkeeping is the truth here (`celery.worker.state`: the requests reserved, running
and waiting for a retry countdown): on a lost broker connection Celery drops the tasks it had not
started (they can no longer be acknowledged), and so do the holdings. Its `requests` dict is keyed
by task id, which a retry keeps: the finishing attempt pops its retry's entry, so the sets of
request objects are read instead.
"""

from collections.abc import Callable, Iterable

from workers.core.constants import EMBED_TASK

# (chunk ids, send time) of each task held.
Held = Iterable[tuple[list[str], float | None]]
_SNAPSHOT_TRIES = 5


def celery_requests() -> list[tuple[list[str], float | None]]:
    """The embed tasks this Celery worker process holds."""
    from celery.worker import state

    held = []
    for request in _snapshot(state.scheduled_requests, state.reserved_requests, state.active_requests):
        if request.name == EMBED_TASK:
            kwargs = request.kwargs or {}
            held.append((list(kwargs.get("chunk_ids", [])), kwargs.get("sent_at")))
    return held


def _snapshot(*sets: Iterable) -> set:
    """The members of sets that Celery's threads change meanwhile (copying may meet a change)."""
    for attempt in range(_SNAPSHOT_TRIES):
        try:
            return {member for each in sets for member in list(each)}
        except RuntimeError:  # "set changed size during iteration": copy again
            if attempt == _SNAPSHOT_TRIES - 1:
                raise  # this heartbeat is skipped; the last one written stands
    return set()


class Holdings:
    def __init__(self, tasks: Callable[[], Held] = celery_requests):
        self._tasks = tasks
        self.consumed_sent_at: float | None = None  # newest send time seen: never goes back

    def chunk_ids(self) -> list[str]:
        """The chunks of the tasks held now (and the newest send time taken is brought up to date)."""
        chunk_ids: set[str] = set()
        for ids, sent_at in self._tasks():
            chunk_ids.update(ids)
            if isinstance(sent_at, int | float) and (self.consumed_sent_at is None or sent_at > self.consumed_sent_at):
                self.consumed_sent_at = float(sent_at)
        return sorted(chunk_ids)
