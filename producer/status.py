"""`producer status`: what the corpus holds and how its embedding goes, from the kept counts.

Light on purpose: an operator runs it often, on a corpus of any size, and it imports neither the
parsers nor Milvus's client (it answers from Postgres alone) nor Celery unless a broker is set.
"""

from contextlib import closing

import psycopg

from workers.core.constants import RATE_WINDOW_S
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, lost, postgres, progress


def status(settings: FleetSettings) -> dict:
    with closing(postgres.connect(settings)) as conn:
        return status_on(conn, settings)


def status_on(conn: psycopg.Connection, settings: FleetSettings) -> dict:
    """What `producer status` shows."""
    kept = progress.row_counts(conn)  # counts kept as rows change: no scan of the corpus
    documents, chunks = kept.get(("documents", 0), 0), kept.get(("chunks", 0), 0)
    live = catalog.live_version(conn)
    counts = progress.progress_in(kept, live.id) if live else progress.Progress(0, 0, 0)
    backlog = sum(kept.get(("pending", version.id), 0) for version in catalog.active_versions(conn))
    rate = progress.recent_rate(conn, RATE_WINDOW_S)
    stuck = progress.stuck_workers(conn, settings.stuck_after_s, settings.worker_gone_after_s)
    gone = progress.gone_workers(conn, settings.worker_gone_after_s)
    lost_chunks = lost.count_lost(conn, settings) if settings.uses_broker else 0
    eta = progress.eta_seconds(backlog, rate)
    return {
        "documents": documents,
        "chunks": chunks,
        "embedded": counts.embedded,
        "pending": counts.pending,
        "failed": counts.failed,
        "index": {"name": live.collection, "model": live.model, "dim": live.dim} if live else None,
        "backlog": backlog,
        "rate_chunks_per_s": rate,
        "eta_s": eta,
        # Work waits, nothing moves: say so instead of an ETA.
        "stalled": backlog > 0 and eta is None,
        "lost_chunks": lost_chunks,
        "stuck_workers": stuck,
        "gone_workers": gone,
    }
