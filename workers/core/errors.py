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

What an error of ours or of a client library means to a caller (an outage to wait out, worth one
more try, or permanent) is decided in one place: `workers.core.failures.classify`.
"""


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
