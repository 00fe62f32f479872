"""Errors, caught by meaning.

FleetError
 ├── TransientError      the service may recover: retry with backoff
 │    ├── ServiceUnavailable   Postgres, Redis or Milvus cannot be reached
 │    └── DeviceOutOfMemory    the accelerator ran out of memory on a batch
 └── PermanentError      retrying cannot help: record it and tell the user
      ├── InvalidInput         bad user input (a level, a path, a query)
      ├── ConfigError          settings that cannot work together
      ├── ChunkTooLong         a chunk over the token budget of one forward pass
      └── QualityGateFailed    a new index version scores worse than the live one

`is_outage` also recognises the client libraries' own errors for an unreachable or timed-out
service: an outage is waited out however long it lasts, and never counts against a chunk.
"""

# Words of pymilvus and gRPC errors that mean "the server is not there (yet)".
_UNREACHABLE = ("fail connecting", "unavailable", "deadline", "timed out", "timeout", "connection refused")


class FleetError(Exception):
    """Root of every error this project raises on purpose."""


class TransientError(FleetError):
    """Worth retrying later."""


class ServiceUnavailable(TransientError):
    """A backing service (Postgres, Redis, Milvus) did not answer."""


class DeviceOutOfMemory(TransientError):
    """The accelerator ran out of memory on a batch; smaller batches may fit."""


class PermanentError(FleetError):
    """Retrying cannot help."""


class InvalidInput(PermanentError):
    """The user asked for something that does not exist or cannot be done."""


class ConfigError(PermanentError):
    """Settings that cannot work: the message says which one to change."""


class ChunkTooLong(PermanentError):
    """A chunk longer than the token budget of one batch."""


class QualityGateFailed(PermanentError):
    """A re-index refused to cut over: the new version retrieves worse than the live one."""


def is_outage(error: BaseException | None) -> bool:
    """True when `error` (or what caused it) says a backing service could not be reached in time."""
    while error is not None:
        if isinstance(error, ServiceUnavailable | ConnectionError | TimeoutError):
            return True
        library = type(error).__module__.split(".")[0]
        if library == "psycopg":
            import psycopg

            if isinstance(error, psycopg.OperationalError):  # connection lost, refused, statement timeout
                return True
        elif library in ("redis", "kombu", "amqp"):
            return "connection" in type(error).__name__.lower() or "timeout" in type(error).__name__.lower()
        elif library in ("pymilvus", "grpc") and any(word in str(error).lower() for word in _UNREACHABLE):
            return True
        error = error.__cause__ or error.__context__
    return False
