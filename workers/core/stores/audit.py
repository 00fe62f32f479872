"""The search log and the audit events in Postgres: written by the query service (in batches, off
the request path) and by the key commands, read by `producer audit`, pruned by the reconciler.

Nothing here is served over HTTP: the tables answer "who searched for what, at which level, and
which documents did they get?", which only an operator may ask.
"""

from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from workers.core.access import AccessLevel

# Event kinds (audit_events.kind).
KEY_CREATED, KEY_REVOKED, REFUSED = "key_created", "key_revoked", "refused"


@dataclass(frozen=True)
class LoggedHit:
    chunk_id: str
    source_path: str
    access_level: int


@dataclass(frozen=True)
class SearchRecord:
    id: str  # the search_id the response carries
    key_name: str
    access_level: int
    index_name: str
    mode: str
    query: str | None  # None unless FLEET_SEARCH_LOG=full
    query_hash: str | None  # FLEET_SEARCH_LOG=hashed
    top_k: int
    latency_ms: float
    created_at: datetime
    hits: list[LoggedHit] = field(default_factory=list)


@dataclass
class Event:
    kind: str
    key_name: str | None
    status: int | None
    detail: str
    created_at: datetime  # the first of them
    count: int = 1  # identical events between two writes

    @property
    def same(self) -> tuple:
        """What identical events share."""
        return (self.kind, self.key_name, self.status, self.detail)


def write_searches(conn: psycopg.Connection, records: list[SearchRecord]) -> None:
    """Record searches and their hits, in one transaction."""
    if not records:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO searches (id, key_name, access_level, index_name, mode, query, query_hash, top_k,"
            " latency_ms, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (
                    r.id,
                    r.key_name,
                    r.access_level,
                    r.index_name,
                    r.mode,
                    r.query,
                    r.query_hash,
                    r.top_k,
                    r.latency_ms,
                    r.created_at,
                )
                for r in records
            ],
        )
        cur.executemany(
            "INSERT INTO search_hits (search_id, rank, chunk_id, source_path, access_level)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (record.id, rank, hit.chunk_id, hit.source_path, hit.access_level)
                for record in records
                for rank, hit in enumerate(record.hits, 1)
            ],
        )


def write_events(conn: psycopg.Connection, events: list[Event]) -> None:
    if events:
        conn.cursor().executemany(
            "INSERT INTO audit_events (kind, key_name, status, detail, created_at, count)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [(e.kind, e.key_name, e.status, e.detail, e.created_at, e.count) for e in events],
        )


def record_event(conn: psycopg.Connection, kind: str, key_name: str | None, detail: str) -> None:
    """One event, now (the key commands)."""
    conn.execute("INSERT INTO audit_events (kind, key_name, detail) VALUES (%s, %s, %s)", (kind, key_name, detail))


def prune(conn: psycopg.Connection, days: int) -> int:
    """Delete searches and events older than `days`; returns the searches deleted."""
    interval = {"days": days}
    deleted = conn.execute(
        "DELETE FROM searches WHERE created_at < now() - make_interval(days => %(days)s)", interval
    ).rowcount
    conn.execute("DELETE FROM audit_events WHERE created_at < now() - make_interval(days => %(days)s)", interval)
    return deleted


@dataclass(frozen=True)
class AuditFilter:
    key_name: str | None = None
    level: AccessLevel | None = None
    document: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


def find_searches(conn: psycopg.Connection, wanted: AuditFilter) -> list[dict]:
    """The searches that match, newest first, each with the documents it returned (by rank)."""
    conditions, params = _key_and_time(wanted, "s.")
    if wanted.level is not None:
        conditions.append("s.access_level = %s")
        params.append(int(wanted.level))
    if wanted.document is not None:
        conditions.append("EXISTS (SELECT 1 FROM search_hits h WHERE h.search_id = s.id AND h.source_path = %s)")
        params.append(wanted.document)
    rows = conn.execute(
        "SELECT s.id, s.created_at, s.key_name, s.access_level, s.index_name, s.mode, s.query, s.query_hash,"
        " s.top_k, s.latency_ms,"
        " coalesce((SELECT array_agg(h.source_path ORDER BY h.rank) FROM search_hits h WHERE h.search_id = s.id),"
        " '{}') FROM searches s"
        f" WHERE {' AND '.join(conditions)} ORDER BY s.created_at DESC, s.id LIMIT %s",
        (*params, wanted.limit),
    ).fetchall()
    names = ("search_id", "time", "key", "level", "index", "mode", "query", "query_hash", "top_k", "latency_ms")
    found = []
    for *values, paths in rows:
        search = dict(zip(names, values, strict=True))
        search["search_id"], search["time"] = str(search["search_id"]), search["time"].isoformat()
        search["level"] = AccessLevel(search["level"]).name
        search["documents"] = list(dict.fromkeys(paths))  # each document once, at its best rank
        found.append(search)
    return found


def find_events(conn: psycopg.Connection, wanted: AuditFilter) -> list[dict]:
    """Key events and refused requests that match the key and time filters, newest first."""
    conditions, params = _key_and_time(wanted, "")
    rows = conn.execute(
        f"SELECT created_at, kind, key_name, status, detail, count FROM audit_events"
        f" WHERE {' AND '.join(conditions)} ORDER BY created_at DESC, id DESC LIMIT %s",
        (*params, wanted.limit),
    ).fetchall()
    return [
        {"time": at.isoformat(), "kind": kind, "key": key, "status": status, "detail": detail, "count": count}
        for at, kind, key, status, detail, count in rows
    ]


def _key_and_time(wanted: AuditFilter, table: str) -> tuple[list[str], list]:
    """The conditions both tables share (their `key_name` and `created_at`), with their values."""
    conditions, params = ["TRUE"], []
    for condition, value in (
        (f"{table}key_name = %s", wanted.key_name),
        (f"{table}created_at >= %s", wanted.since),
        (f"{table}created_at < %s", wanted.until),
    ):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    return conditions, params


@dataclass(frozen=True)
class LoggedSearch:
    """What feedback on a search is checked against: whose it was, what it returned."""

    key_name: str
    index_name: str
    chunk_ids: list[str]


def find_search(conn: psycopg.Connection, search_id: str) -> LoggedSearch | None:
    row = conn.execute(
        "SELECT s.key_name, s.index_name,"
        " coalesce((SELECT array_agg(h.chunk_id) FROM search_hits h WHERE h.search_id = s.id), '{}')"
        " FROM searches s WHERE s.id = %s",
        (search_id,),
    ).fetchone()
    return LoggedSearch(*row) if row else None


def write_feedback(conn: psycopg.Connection, search_id: str, chunk_id: str, relevant: bool, note: str | None) -> None:
    """One verdict per search and chunk: a second replaces the first."""
    conn.execute(
        "INSERT INTO search_feedback (search_id, chunk_id, relevant, note) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (search_id, chunk_id) DO UPDATE SET relevant = EXCLUDED.relevant, note = EXCLUDED.note,"
        " created_at = now()",
        (search_id, chunk_id, relevant, note),
    )


def useful_rates(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """Per index version (collection name): hits marked relevant, and hits marked at all, over the
    searches still kept."""
    rows = conn.execute(
        "SELECT s.index_name, count(*) FILTER (WHERE f.relevant), count(*)"
        " FROM search_feedback f JOIN searches s ON s.id = f.search_id GROUP BY s.index_name"
    ).fetchall()
    return {index_name: (relevant, marked) for index_name, relevant, marked in rows}
