"""Read one document: its bytes (stable, bounded), its fingerprint, its text and its level.

A file whose fingerprint (its bytes, its sidecar, the folder rules and `--level` that apply,
the parser version) matches the one recorded is unchanged and is not parsed again. Anything
wrong with one file is that file's refusal, with a one-line reason; the run goes on.
"""

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from producer.levels import Declaration, LevelRefused, resolve
from producer.parsers import PARSER_VERSION, ParsedDocument, parser_for
from workers.access import AccessLevel
from workers.errors import InvalidInput


@dataclass(frozen=True)
class Rejection:
    """A file refused (or skipped), and why. `withdraw`: its level can no longer be trusted, so a
    version of it already indexed is taken out of the index."""

    path: str
    reason: str
    withdraw: bool = False

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class Unchanged:
    name: str


@dataclass(frozen=True)
class Document:
    source_path: str  # relative to the ingested root, POSIX style, NFC: the document's identity
    access_level: AccessLevel
    level_source: str  # which declaration gave the level
    content_sha256: str  # of the file's bytes
    fingerprint: str  # of everything that decides its chunks and level: unchanged means not parsed again
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """What is needed to read one document (picklable: it crosses to parser processes)."""

    path: Path
    name: str
    sidecar: Declaration | None
    inherited: Declaration | None
    default_level: AccessLevel | None
    max_bytes: int
    known_fingerprint: str | None = None


class ReadRefused(InvalidInput):
    """The file cannot be read as it is: too large, gone, changing, unreadable."""


def read_document(source: Source) -> tuple[Document, ParsedDocument] | Unchanged | Rejection:
    """The document and its parsed text, Unchanged (fingerprint as recorded), or why it is refused."""
    try:
        data = read_stable(source.path, source.max_bytes)
    except ReadRefused as err:
        return Rejection(source.name, str(err))
    content_sha256 = hashlib.sha256(data).hexdigest()
    fingerprint = _fingerprint(content_sha256, source)
    if fingerprint == source.known_fingerprint:
        return Unchanged(source.name)
    parser = parser_for(Path(source.name).suffix)
    try:
        parsed = parser.convert(data)
        resolved = resolve(
            [d for d in (source.sidecar, parsed.front_matter) if d], source.inherited, source.default_level
        )
    except LevelRefused as err:
        return Rejection(source.name, str(err), withdraw=True)
    except InvalidInput as err:
        return Rejection(source.name, str(err))
    if not parsed.text.strip():
        return Rejection(source.name, "no text in it: nothing to embed")
    document = Document(
        source_path=source.name,
        access_level=resolved.level,
        level_source=resolved.source,
        content_sha256=content_sha256,
        fingerprint=fingerprint,
        metadata={**parsed.metadata, **resolved.metadata},
    )
    return document, parsed


def read_stable(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refused when larger than `max_bytes`, gone, or changed while read."""
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise ReadRefused("not a regular file")
        if before.st_size > max_bytes:
            raise ReadRefused(_too_large(before.st_size, max_bytes))
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
            after = os.fstat(file.fileno())
    except FileNotFoundError as err:
        raise ReadRefused("vanished before it could be read") from err
    except OSError as err:
        raise ReadRefused(f"cannot read it ({err.strerror})") from err
    if len(data) > max_bytes:
        raise ReadRefused(_too_large(len(data), max_bytes))
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(data) != after.st_size:
        raise ReadRefused("changed while it was read: ingest again once it is written")
    return data


def _too_large(size: int, max_bytes: int) -> str:
    return f"larger than FLEET_MAX_FILE_MB ({size / 2**20:.1f} MB > {max_bytes / 2**20:.0f} MB)"


def _fingerprint(content_sha256: str, source: Source) -> str:
    parts = [f"parser {PARSER_VERSION}", content_sha256, f"--level {source.default_level}"]
    for declaration in (source.sidecar, source.inherited):
        if declaration is not None:
            parts.append(f"{declaration.source} {declaration.level} {declaration.error} {declaration.digest}")
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
