"""The one failure classifier: what an error means to whoever has to decide what happens next.

    outage      a backing service (Postgres, Redis, Milvus) cannot be reached, is restarting,
                loading its data or out of connections: wait it out (capped backoff); the work's
                attempts are not spent, however long it lasts
    retry-once  the work itself may succeed on another try (a deadlock, a serialization failure,
                a statement cancelled by its timeout, the device out of memory): try again, and
                let the try spend one of the work's attempts, so that it cannot loop for ever
    permanent   trying again cannot help (bad input, a limit of the database, a bug): record it
                and say what to do

Sending, the engine, the Celery task, the reconciler, the query service and the command line
all decide through `classify`. The client libraries wrap each other's errors (kombu wraps
redis-py's, pymilvus wraps gRPC's, Celery wraps the task's), so the whole `__cause__` /
`__context__` chain is read: an outage anywhere in it is an outage; otherwise the outermost
error that can be told decides.
"""

import errno
import socket
from enum import StrEnum

from workers.core.errors import DeviceOutOfMemory, PermanentError, ServiceUnavailable, TransientError


class Failure(StrEnum):
    OUTAGE = "outage"
    RETRY_ONCE = "retry-once"
    PERMANENT = "permanent"


# SQLSTATE classes and codes of a server that is going away, starting, or out of room for us.
_PG_OUTAGE_CLASSES = ("08", "53")  # connection exception, insufficient resources (53300: too many connections)
_PG_OUTAGE_CODES = {"57P01", "57P02", "57P03", "57P05"}  # admin/crash shutdown, cannot connect now, idle timeout
# Worth another try of the same work: serialization failure, deadlock, lock not available, cancelled (timeout).
_PG_RETRY_CLASSES = ("40",)
_PG_RETRY_CODES = {"55P03", "57014"}
# Words of pymilvus and gRPC errors that mean "the server is not there (yet)".
_MILVUS_UNREACHABLE = (
    "fail connecting",
    "unavailable",
    "deadline",
    "timed out",
    "timeout",
    "connection refused",
    "connection reset",
    "socket closed",
    "channel closed",
)
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EHOSTDOWN}
_SERVICE_OF_LIBRARY = {
    "psycopg": "Postgres",
    "psycopg_pool": "Postgres",
    "redis": "Redis",
    "kombu": "the broker",
    "amqp": "the broker",
    "celery": "the broker",
    "pymilvus": "Milvus",
    "grpc": "Milvus",
    "milvus_lite": "Milvus",
}


def classify(error: BaseException) -> Failure:
    """What `error` means: an outage, worth one more try, or permanent."""
    verdicts = [_one(link) for link in chain(error)]
    if Failure.OUTAGE in verdicts:
        return Failure.OUTAGE
    return next((verdict for verdict in verdicts if verdict is not None), Failure.PERMANENT)


def is_outage(error: BaseException | None) -> bool:
    return error is not None and classify(error) is Failure.OUTAGE


def service_of(error: BaseException) -> str | None:
    """The backing service an error comes from (the innermost that can be told), or None."""
    named = [_SERVICE_OF_LIBRARY.get(type(link).__module__.split(".")[0]) for link in chain(error)]
    return next((service for service in reversed(named) if service), None)


def explain(error: BaseException) -> str:
    """One line for a person: which service is out and why, or the error's type and message."""
    if isinstance(error, ServiceUnavailable):
        return str(error)
    message = _first_line(error)
    service = service_of(error)
    if service is not None and classify(error) is Failure.OUTAGE:
        return f"{service} is unavailable ({message})"
    if service is not None:
        return f"{service} failed ({message})"
    return message


def as_unavailable(error: BaseException) -> ServiceUnavailable | None:
    """`error` as a ServiceUnavailable when it is an outage, else None."""
    if isinstance(error, ServiceUnavailable):
        return error
    if classify(error) is not Failure.OUTAGE:
        return None
    unavailable = ServiceUnavailable(explain(error))
    unavailable.__cause__ = error
    return unavailable


def chain(error: BaseException | None) -> list[BaseException]:
    """`error` and what caused it, outermost first (a cycle is followed once)."""
    links: list[BaseException] = []
    while error is not None and all(error is not seen for seen in links):
        links.append(error)
        error = error.__cause__ or error.__context__
    return links


def _one(error: BaseException) -> Failure | None:
    """One error's meaning, or None when this error alone does not tell."""
    if isinstance(error, ServiceUnavailable):
        return Failure.OUTAGE
    if isinstance(error, DeviceOutOfMemory | TransientError):
        return Failure.RETRY_ONCE
    if isinstance(error, PermanentError):
        return Failure.PERMANENT
    library = type(error).__module__.split(".")[0]
    if library in ("psycopg", "psycopg_pool"):
        return _postgres(error)
    if library == "redis":
        return _redis(error)
    if library in ("kombu", "amqp"):
        return _broker(error)
    if library in ("pymilvus", "grpc"):
        return _milvus(error)
    if isinstance(error, ConnectionError | TimeoutError | socket.timeout | socket.gaierror):
        return Failure.OUTAGE
    if isinstance(error, OSError) and error.errno in _UNREACHABLE_ERRNOS:
        return Failure.OUTAGE
    return None


def _postgres(error: BaseException) -> Failure | None:
    import psycopg
    import psycopg_pool

    if isinstance(error, psycopg_pool.PoolTimeout | psycopg.InterfaceError):
        return Failure.OUTAGE  # no connection to be had, or the one we had is gone
    if not isinstance(error, psycopg.Error):
        return None
    code = error.sqlstate
    if code is None:
        # Raised by the client, not the server: refused, dropped, timed out connecting.
        return Failure.OUTAGE if isinstance(error, psycopg.OperationalError) else Failure.PERMANENT
    if code.startswith(_PG_OUTAGE_CLASSES) or code in _PG_OUTAGE_CODES:
        return Failure.OUTAGE
    if code.startswith(_PG_RETRY_CLASSES) or code in _PG_RETRY_CODES:
        return Failure.RETRY_ONCE
    return Failure.PERMANENT  # a limit exceeded (54xxx), bad data, a missing table: not by waiting


def _redis(error: BaseException) -> Failure | None:
    import redis.exceptions as errors

    # ConnectionError covers BusyLoadingError: a restarted Redis replaying its data.
    if isinstance(error, errors.ConnectionError | errors.TimeoutError | errors.TryAgainError):
        return Failure.OUTAGE
    if isinstance(error, errors.ReadOnlyError | errors.MasterDownError):
        return Failure.OUTAGE  # a failover in progress
    return Failure.PERMANENT if isinstance(error, errors.RedisError) else None


def _broker(error: BaseException) -> Failure | None:
    import kombu.exceptions

    # What `send_task` raises when it cannot reach the broker, whatever the transport's own error.
    if isinstance(error, kombu.exceptions.OperationalError):
        return Failure.OUTAGE
    name = type(error).__name__.lower()
    if "connection" in name or "timeout" in name:
        return Failure.OUTAGE
    return None  # what caused it may tell


def _milvus(error: BaseException) -> Failure | None:
    from pymilvus.exceptions import MilvusUnavailableException

    if isinstance(error, MilvusUnavailableException):
        return Failure.OUTAGE
    if any(word in _first_line(error).lower() for word in _MILVUS_UNREACHABLE):
        return Failure.OUTAGE
    return None  # a gRPC error under it may tell; else permanent


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
