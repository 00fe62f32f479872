"""Postgres connections: a server from FLEET_DATABASE_URL, or an embedded one under the data dir."""

import logging
from functools import cache
from pathlib import Path

import psycopg

from workers.core import schema
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings

log = logging.getLogger(__name__)


def database_url(settings: FleetSettings) -> str:
    """The configured server's URL, or that of the embedded server, started on first use."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return _embedded_server(settings.embedded_postgres_dir.resolve())


@cache
def _embedded_server(pgdata: Path) -> str:
    # Imported here: a fleet deployment never needs the embedded server.
    import pgserver

    _forget_dead_handles(pgdata)
    log.debug("starting embedded Postgres in %s", pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    _keep_alive.append(server)  # the server stops when its last handle is collected
    return server.get_uri()


_keep_alive: list = []


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver stops its server when the last process using it exits, counting those processes
    in a file; a process killed outright stays counted for ever, and then no later command ever
    stops the server. Forget the dead ones before counting ourselves in."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList, process_is_running

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        try:
            pids = handles.get()
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if process_is_running(pid)]
        if alive != pids:
            log.info(
                "embedded Postgres: forgetting %d process(es) that exited without stopping it", len(pids) - len(alive)
            )
            handles.put(alive)


def open_connection(settings: FleetSettings) -> psycopg.Connection:
    """An autocommit connection, whatever the schema; transactions are explicit."""
    try:
        return psycopg.connect(
            database_url(settings),
            autocommit=True,
            connect_timeout=max(1, round(settings.pg_connect_timeout_s)),
            options=f"-c statement_timeout={int(settings.pg_statement_timeout_s * 1000)}",
            # A server gone while the connection idles is noticed within a minute, not hours.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg.OperationalError as err:
        raise ServiceUnavailable(
            f"cannot reach Postgres ({err}); check FLEET_DATABASE_URL or start the server"
        ) from err


def connect(settings: FleetSettings, *, migrate: bool | None = None) -> psycopg.Connection:
    """A connection to a database whose schema is current.

    The embedded database is migrated on connect; a server's schema is `migrate db`'s job
    (unless `migrate=True`), and a server behind it is refused with that advice.
    """
    conn = open_connection(settings)
    if migrate if migrate is not None else settings.database_url is None:
        schema.apply(conn)
    else:
        schema.check_current(conn)
    return conn
