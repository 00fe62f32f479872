"""Postgres and Milvus as the service uses them: a small connection pool, one Milvus client, and
what their failures mean to a caller (503 with the reason, until the store answers again)."""

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from pymilvus import MilvusClient

from workers.core import failures
from workers.core.errors import ServiceUnavailable
from workers.core.settings import FleetSettings
from workers.core.stores import milvus, postgres

log = logging.getLogger(__name__)

# Connections held at most: the search thread, the key and index pollers, readiness checks.
POOL_SIZE = 4


def as_unavailable(err: BaseException) -> ServiceUnavailable | None:
    """`err` as a reason to answer 503: the service cannot answer while a store it needs fails,
    whatever the failure's class (`failures.explain` says which store and why); None when the
    error is not a store's."""
    if isinstance(err, ServiceUnavailable):
        return err
    if failures.service_of(err) is None:
        return None
    unavailable = ServiceUnavailable(failures.explain(err))
    unavailable.__cause__ = err
    return unavailable


def describe(err: BaseException) -> str:
    """One line for an error: which store failed and why, or the error's type and message."""
    return failures.explain(err) if failures.service_of(err) else f"{type(err).__name__}: {err}"


class Stores:
    def __init__(self, settings: FleetSettings):
        self.settings = settings
        self.timeout_s = settings.api_store_timeout_s
        self._pool: ConnectionPool | None = None
        self._milvus: MilvusClient | None = None
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; an unreachable Postgres is ServiceUnavailable."""
        try:
            with self._open_pool().connection(timeout=self.timeout_s) as conn:
                yield conn
        except PoolTimeout as err:
            raise ServiceUnavailable(f"Postgres did not answer within {self.timeout_s:g} s") from err

    def milvus(self) -> MilvusClient:
        with self._lock:
            if self._milvus is None:
                self._milvus = milvus.connect(self.settings)
            return self._milvus

    def check(self) -> list[str]:
        """Why each store does not answer now (empty when both do)."""
        problems = []
        try:
            with self.connection() as conn:
                conn.execute("SELECT 1")
        except Exception as err:
            problems.append(str(as_unavailable(err) or err))
        try:
            self.milvus().list_aliases(timeout=self.timeout_s)
        except Exception as err:
            problems.append(str(as_unavailable(err) or err))
        return problems

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
            if self._milvus is not None:
                self._milvus.close()

    def _open_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                # Once, before pooling: a server's schema must be current (the embedded one is migrated).
                with closing(postgres.connect(self.settings)):
                    pass
                self._pool = ConnectionPool(
                    postgres.database_url(self.settings),
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": max(1, math.ceil(self.timeout_s)),
                        "options": f"-c statement_timeout={int(self.timeout_s * 1000)}",
                    },
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=self.timeout_s,
                    # A connection that died with its server is replaced, not handed out.
                    check=ConnectionPool.check_connection,
                    name="api",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool
