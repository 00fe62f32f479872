"""The corpus-wide operations' SQL, caught as they run, and what the planner does with it.

`corpus_queries` runs each operation that reads or changes the whole corpus (status, the
reconciler, `migrate verify`, a re-index's plan, fill and backfill, ingest's fingerprints,
`migrate status`; the exporter runs status's queries) on a connection that records every statement, and returns them by
operation. `plan` EXPLAINs one (ANALYZE inside a transaction rolled back, so nothing changes), and
`scans` lists the tables it reads sequentially. Shared by tests/integration/test_query_plans.py
(no sequential scan of the corpus tables) and ops/bench/scale.py (the slowest one's plan).
"""

from collections.abc import Callable
from contextlib import closing

import psycopg

CORPUS_TABLES = ("chunks", "chunk_embeddings", "documents")


class RecordingCursor(psycopg.Cursor):
    """A cursor that keeps every statement it runs, with its parameters."""

    def execute(self, query, params=None, **kwargs):
        self.connection.recorded.append((query, params))
        return super().execute(query, params, **kwargs)


class RecordingServerCursor(psycopg.ServerCursor):
    """A server-side cursor (a statement read in batches) that keeps its statement too."""

    def execute(self, query, params=None, **kwargs):
        self.connection.recorded.append((query, params))
        return super().execute(query, params, **kwargs)

    def executemany(self, query, params_seq, **kwargs):
        params_seq = list(params_seq)
        if params_seq:
            self.connection.recorded.append((query, params_seq[0]))
        return super().executemany(query, params_seq, **kwargs)


def recording(conn: psycopg.Connection) -> psycopg.Connection:
    conn.recorded = []
    conn.cursor_factory = RecordingCursor
    conn.server_cursor_factory = RecordingServerCursor
    return conn


def corpus_operations(settings) -> dict[str, Callable[[psycopg.Connection], object]]:
    """Each corpus-wide operation as a function of a connection (Milvus where one needs it)."""
    from migrations import consistency, reindex
    from producer import registry, status
    from workers.core.stores import catalog, lost, milvus, outbox, progress

    def live(conn):
        return catalog.live_version(conn)

    return {
        "status": lambda conn: status.status_on(conn, settings),
        "reconciler: lost chunks": lambda conn: lost.lost_chunks(conn, settings, 20_000),
        "outbox": lambda conn: outbox.apply_if_possible(conn, milvus.LazyClient(settings)),
        "ingest: fingerprints": lambda conn: registry.fingerprints(conn),
        "pending chunk ids": lambda conn: next(progress.pending_batches(conn, live(conn).id), []),
        "verify": lambda conn: consistency.check_version(conn, milvus.connect(settings), live(conn), repair=False),
        "reindex plan": lambda conn: reindex.make_plan(conn, f"null:{live(conn).dim // 2}", None),
        "migrate status": lambda conn: reindex.version_status(conn),
    }


def corpus_queries(conn: psycopg.Connection, settings, names: set[str] | None = None) -> dict[str, list[tuple]]:
    """The statements each corpus-wide operation (those in `names`, or all) runs, by operation,
    caught on a recording connection to `conn`'s database."""
    caught: dict[str, list[tuple]] = {}
    for name, operation in corpus_operations(settings).items():
        if names is not None and name not in names:
            continue
        with closing(psycopg.connect(conn.info.dsn, autocommit=True)) as recorder:
            recording(recorder)
            operation(recorder)
            caught[name] = [(query, params) for query, params in recorder.recorded if _plannable(query)]
    return caught


def _plannable(query) -> bool:
    text = query if isinstance(query, str) else query.as_string(None)
    return text.lstrip().split(None, 1)[0].upper() in ("SELECT", "WITH", "UPDATE", "DELETE", "INSERT")


def plan(conn: psycopg.Connection, query, params, analyze: bool = False) -> dict:
    """EXPLAIN (FORMAT JSON) of one statement; with `analyze` it runs, then is rolled back."""
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    text = query if isinstance(query, str) else query.as_string(conn)
    with conn.transaction(force_rollback=True):
        ((explained,),) = conn.execute(f"EXPLAIN ({options}) {text}", params).fetchall()
    return explained[0]


def scans(node: dict) -> list[tuple[str, str]]:
    """(node type, table) of every scan in a plan tree."""
    found = []
    if "Relation Name" in node:
        found.append((node["Node Type"], node["Relation Name"]))
    for child in node.get("Plans", ()):
        found += scans(child)
    return found


def rows_read(node: dict, table: str) -> int:
    """Rows the scans of `table` in an analysed plan went through (returned and filtered out)."""
    read = 0
    if node.get("Relation Name") == table:
        loops = node.get("Actual Loops", 1)
        read += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    return read + sum(rows_read(child, table) for child in node.get("Plans", ()))


def sequential(node: dict) -> list[str]:
    """The corpus tables a plan reads whole."""
    return sorted({table for kind, table in scans(node["Plan"]) if kind == "Seq Scan" and table in CORPUS_TABLES})


def text_plan(conn: psycopg.Connection, query, params) -> list[str]:
    """EXPLAIN ANALYZE in text, as a person reads it (rolled back)."""
    text = query if isinstance(query, str) else query.as_string(conn)
    with conn.transaction(force_rollback=True):
        return [line for (line,) in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {text}", params)]
