"""Every search accounted for: the query service's side of the search log and the audit events.

A search's record (key, level, version, mode, the query as FLEET_SEARCH_LOG says, the hits and
their documents, latency, time) waits in a bounded buffer and is written in batches at every
poll, off the request path. A full buffer drops the newest record, counts it
(`fleet_api_search_log_dropped_total`) and says so in the log once per outage: never a silent
loss. Refusals identical to one waiting (same key, status and reason) are counted in it, so a
flood of refused requests takes one place in the buffer, not the room of the searches.

With FLEET_AUDIT_REQUIRED the record is written before the answer goes, and a search whose
record cannot be written is refused (503): fail closed.
"""

import collections
import hashlib
import hmac
import logging
import threading
import time
import uuid
from datetime import UTC, datetime

from producer.api.metrics import ApiMetrics
from producer.api.stores import Stores
from producer.search import SearchHit
from workers.core.access import AccessLevel
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings
from workers.core.stores import audit
from workers.core.stores.audit import Event, LoggedHit, SearchRecord

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0


class SearchLog:
    def __init__(self, settings: FleetSettings, stores: Stores, metrics: ApiMetrics):
        self.mode = settings.search_log
        self.required = settings.audit_required
        self.days = settings.search_log_days
        self._key = settings.search_log_key.get_secret_value().encode() if settings.search_log_key else b""
        self.stores = stores
        self.metrics = metrics
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._searches: collections.deque[SearchRecord] = collections.deque()
        self._events: dict[tuple, Event] = {}  # by what identical events share, in arrival order
        self._capacity = settings.search_log_buffer
        self._dropping = False
        self._pruned_at = -PRUNE_EVERY_S

    def record_search(
        self,
        key_name: str,
        level: AccessLevel,
        index_name: str,
        mode: str,
        query: str,
        top_k: int,
        seconds: float,
        hits: list[SearchHit],
    ) -> str | None:
        """The search's id; its record written now (FLEET_AUDIT_REQUIRED: 503 if it cannot be) or
        queued. None with FLEET_SEARCH_LOG=off."""
        if self.mode == "off":
            return None
        record = SearchRecord(
            id=str(uuid.uuid4()),
            key_name=key_name,
            access_level=int(level),
            index_name=index_name,
            mode=mode,
            query=query if self.mode == "full" else None,
            query_hash=self._hash(query) if self.mode == "hashed" else None,
            top_k=top_k,
            latency_ms=1000 * seconds,
            created_at=datetime.now(UTC),
            hits=[LoggedHit(hit.chunk_id, hit.source_path, int(AccessLevel.parse(hit.access_level))) for hit in hits],
        )
        if self.required:
            self._write_now(record)
        else:
            self._queue(record)
        return record.id

    def record_refusal(self, key_name: str | None, status: int, detail: str) -> None:
        if self.mode == "off":
            return
        event = Event(audit.REFUSED, key_name, status, detail, datetime.now(UTC))
        with self._lock:
            waiting = self._events.get(event.same)
            if waiting is not None:
                waiting.count += 1
                return
        self._queue(event)

    def flush(self) -> None:
        """Write what waits (at every poll); hourly, delete what is older than FLEET_SEARCH_LOG_DAYS
        (the reconciler does it too: a deployment without workers keeps the bound)."""
        with self._flushing:  # one at a time (the poll, a feedback): each record written and removed once
            self._flush()

    def _flush(self) -> None:
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self.prune()
            self._pruned_at = time.monotonic()
        with self._lock:  # the events leave now (later refusals start new ones), back if not written
            searches, events, self._events = list(self._searches), self._events, {}
        if searches or events:
            try:
                with self.stores.connection() as conn:
                    audit.write_searches(conn, searches)
                    audit.write_events(conn, list(events.values()))
            except BaseException:
                self._put_back(events)
                raise
            with self._lock:  # written: only now do they leave the buffer (an outage loses none)
                for _ in searches:
                    self._searches.popleft()
                self._dropping = False
        self.metrics.search_log_waiting.set(len(self._searches) + len(self._events))

    def find(self, search_id: str) -> audit.LoggedSearch | None:
        """The search as recorded (blocking); one of this replica's still waiting is written first."""
        with self._lock:
            waiting = any(record.id == search_id for record in self._searches)
        if waiting:
            self.flush()
        with self.stores.connection() as conn:
            return audit.find_search(conn, search_id)

    def record_feedback(self, search_id: str, chunk_id: str, relevant: bool, note: str | None) -> None:
        with self.stores.connection() as conn:
            audit.write_feedback(conn, search_id, chunk_id, relevant, note)

    def prune(self) -> int:
        with self.stores.connection() as conn:
            return audit.prune(conn, self.days)

    def _write_now(self, record: SearchRecord) -> None:
        try:
            with self.stores.connection() as conn:
                audit.write_searches(conn, [record])
        except Exception as err:
            raise ServiceUnavailable(
                f"the search could not be recorded ({err.__class__.__name__}) and FLEET_AUDIT_REQUIRED is set: "
                "not answered; try again when Postgres answers"
            ) from err

    def _put_back(self, events: dict[tuple, Event]) -> None:
        """Events that could not be written, ahead of (and counting) those refused since."""
        with self._lock:
            for same, event in self._events.items():
                if same in events:
                    events[same].count += event.count
                else:
                    events[same] = event
            self._events = events

    def _queue(self, item: SearchRecord | Event) -> None:
        with self._lock:
            if len(self._searches) + len(self._events) < self._capacity:
                if isinstance(item, Event):
                    self._events[item.same] = item
                else:
                    self._searches.append(item)
                return
            warn, self._dropping = not self._dropping, True
        self.metrics.search_log_dropped.inc()
        if warn:
            log.warning(
                "the search log buffer is full (%d records: Postgres is away or too slow): records are dropped and "
                "counted in fleet_api_search_log_dropped_total until it drains",
                self._capacity,
            )

    def _hash(self, query: str) -> str:
        return hmac.new(self._key, query.encode("utf-8"), hashlib.sha256).hexdigest()
