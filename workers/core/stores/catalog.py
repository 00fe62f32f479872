"""Index versions: which model and dimension each Milvus collection holds, and which is live."""

from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

from workers.core.constants import (
    ANALYZER,
    COLLECTION_PREFIX,
    DENSE,
    HYBRID,
    SEARCH_MODES,
    STATE_BUILDING,
    STATE_LIVE,
)
from workers.core.errors import InvalidInput


@dataclass(frozen=True)
class IndexVersion:
    id: int
    model: str
    dim: int
    collection: str
    state: str
    quantize: str = "none"  # "int8" or "fp8": the model runs quantised, for documents and queries alike
    # The Milvus analyser of the chunk text (keyword and hybrid search); None: vectors only.
    analyzer: str | None = None

    @property
    def modes(self) -> tuple[str, ...]:
        """The search modes its collection answers."""
        return SEARCH_MODES if self.analyzer else (DENSE,)

    @property
    def default_mode(self) -> str:
        return HYBRID if self.analyzer else DENSE


_COLUMNS = "id, model, dim, collection, state, quantize, analyzer"
# Transactions that write chunk rows take it shared; one that changes which versions are active
# (create, cutover) takes it exclusively — so no chunk is written for a stale set of versions.
_VERSIONS_LOCK = 7_340_212


def lock_versions(conn: psycopg.Connection, exclusive: bool) -> None:
    """Take the versions lock for the current transaction."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"SELECT {function}(%s)", (_VERSIONS_LOCK,))


def live_version(conn: psycopg.Connection) -> IndexVersion | None:
    with conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM index_versions WHERE state = %s", (STATE_LIVE,)).fetchone()


def get_version(conn: psycopg.Connection, version_id: int) -> IndexVersion | None:
    with conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM index_versions WHERE id = %s", (version_id,)).fetchone()


def version_by_collection(conn: psycopg.Connection, collection: str) -> IndexVersion | None:
    with conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM index_versions WHERE collection = %s", (collection,)).fetchone()


def all_versions(conn: psycopg.Connection) -> list[IndexVersion]:
    with conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        return cur.execute(f"SELECT {_COLUMNS} FROM index_versions ORDER BY id").fetchall()


def active_versions(conn: psycopg.Connection) -> list[IndexVersion]:
    """The versions new chunks must be written to: the live one and any being built."""
    with conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        return cur.execute(
            f"SELECT {_COLUMNS} FROM index_versions WHERE state IN (%s, %s) ORDER BY id",
            (STATE_LIVE, STATE_BUILDING),
        ).fetchall()


def create_version(
    conn: psycopg.Connection, model: str, dim: int, state: str, quantize: str = "none", analyzer: str | None = ANALYZER
) -> IndexVersion:
    """Register a version; its collection is named after its id (`chunks_v7`). New versions hold
    the chunk text for keyword search unless `analyzer` is None."""
    with conn.transaction(), conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        lock_versions(conn, exclusive=True)
        (version_id,) = conn.execute("SELECT nextval('index_versions_id_seq')").fetchone()
        return cur.execute(
            f"INSERT INTO index_versions (id, model, dim, collection, state, quantize, analyzer, activated_at)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s = 'live' THEN now() END) RETURNING {_COLUMNS}",
            (version_id, model, dim, f"{COLLECTION_PREFIX}{version_id}", state, quantize, analyzer, state),
        ).fetchone()


def canary(conn: psycopg.Connection) -> tuple[IndexVersion, float] | None:
    """The version answering a share of the searches before its cutover, with that share (%)."""
    with conn.cursor(row_factory=class_row(IndexVersion)) as cur:
        version = cur.execute(f"SELECT {_COLUMNS} FROM index_versions WHERE canary_percent IS NOT NULL").fetchone()
    if version is None:
        return None
    (percent,) = conn.execute("SELECT canary_percent FROM index_versions WHERE id = %s", (version.id,)).fetchone()
    return version, float(percent)


def set_canary(conn: psycopg.Connection, version_id: int, percent: float | None) -> None:
    """Make `version_id` the canary at `percent` (None: no longer one). One canary at a time."""
    with conn.transaction():
        lock_versions(conn, exclusive=True)
        if percent is not None:
            other = canary(conn)
            if other is not None and other[0].id != version_id:
                raise InvalidInput(
                    f"{other[0].collection} is already the canary ({other[1]:g} %): "
                    "`migrate promote` or `migrate abort` it first"
                )
        conn.execute("UPDATE index_versions SET canary_percent = %s WHERE id = %s", (percent, version_id))
