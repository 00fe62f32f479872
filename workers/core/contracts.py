"""What crosses the queue: ids and a version number, never text or Python objects.

Chunk text is read from Postgres by the worker, so a message stays small and a chunk edited
since it was enqueued is embedded as it is now, or skipped if it is gone.
"""

import re
from dataclasses import dataclass, field

from workers.core.errors import InvalidInput

CHUNK_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class EmbedTask:
    index_version: int
    chunk_ids: list[str] = field(default_factory=list)
    # When the chunks were recorded as sent (Postgres's clock, epoch seconds); None in older messages.
    sent_at: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.index_version, int) or self.index_version < 1:
            raise InvalidInput(f"bad index version {self.index_version!r}")
        bad = [chunk_id for chunk_id in self.chunk_ids if not CHUNK_ID.fullmatch(str(chunk_id))]
        if bad:
            raise InvalidInput(f"bad chunk id(s) {bad[:3]!r}")
        if self.sent_at is not None and not isinstance(self.sent_at, int | float):
            raise InvalidInput(f"bad send time {self.sent_at!r}")

    def to_kwargs(self) -> dict:
        """The Celery task arguments (readable in Flower: a version, ids and the send time)."""
        kwargs = {"index_version": self.index_version, "chunk_ids": list(self.chunk_ids)}
        if self.sent_at is not None:
            kwargs["sent_at"] = self.sent_at
        return kwargs


@dataclass(frozen=True)
class EmbedResult:
    embedded: int = 0
    skipped: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return {"embedded": self.embedded, "skipped": self.skipped, "failed": self.failed}
