"""The Postgres schema: `NNNN_name.sql` files beside this module, applied in order, each in its
own transaction, recorded with its hash.

They live with the workers because every layer needs them: an embedded database is migrated by
whichever process opens it first, and a server's is checked (`migrate db` applies it). Two
processes starting at once (producer and worker) serialise on an advisory lock. A file edited
after it was applied is refused: released migrations are frozen.
"""

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from workers.core.errors import ConfigError

_FILE = re.compile(r"(\d{4})_(\w+)\.sql")
# Any fixed number: it names the lock that serialises concurrent `migrate db` runs.
_LOCK_ID = 7_340_211


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped in this package, in order."""
    found = []
    for entry in resources.files(__name__).iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda migration: migration.version)


def apply(conn: psycopg.Connection) -> list[Migration]:
    """Bring the schema up to date; return the migrations applied now (none when current)."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = dict(conn.execute("SELECT version, sha256 FROM schema_migrations").fetchall())
        applied = []
        for migration in available():
            if migration.version in done:
                _check_frozen(migration, done[migration.version])
                continue
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.sha256),
                )
            applied.append(migration)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))


def check_current(conn: psycopg.Connection) -> None:
    """Refuse to work on a database whose schema is behind this code's."""
    latest = available()[-1].version
    (exists,) = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    current = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] if exists else None
    if current is None or current < latest:
        raise ConfigError(
            f"the database schema is at version {current or 0}, this code needs {latest}: run `migrate db`"
        )


def _check_frozen(migration: Migration, recorded_sha256: str) -> None:
    if migration.sha256 != recorded_sha256:
        raise ConfigError(
            f"migration {migration.version:04d}_{migration.name}.sql changed after it was applied; "
            "released migrations are frozen: restore it and add a new numbered file instead"
        )
