"""Read one document: its bytes (stable, bounded), its fingerprint, its text and its level.

A file whose fingerprint (its bytes, its sidecar, the folder rules and `--level` that apply,
the parser version) matches the one recorded is unchanged and is not parsed again. Anything
wrong with one file is that file's refusal, with a one-line reason; the run goes on.
"""

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from producer.declarations import Claim, Declaration, claims, head, named_in_metadata
from producer.levels import Place, decide
from producer.parsers import PARSER_VERSION, ParsedDocument, parser_for
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput

# What a terminal or a log would act on rather than show: C0 and C1 controls, and the
# bidirectional overrides and isolates that reorder a line (a name must not forge output).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` as shown to a person: control and bidi characters escaped (`\\n`, `\\x1b`, `\\u202e`)."""
    return _UNPRINTABLE.sub(lambda m: _ESCAPES.get(m[0]) or m[0].encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True)
class Rejection:
    """A file refused (or skipped), and why. `withdraw`: a version of it already indexed is taken
    out of the index (fail closed), unless the file was only busy or the name is another's."""

    path: str
    reason: str
    withdraw: bool = True

    def to_dict(self) -> dict:
        return {"path": printable(self.path), "reason": printable(self.reason)}


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

    path: Path  # the real file
    name: str
    places: tuple[Place, ...]
    default_level: AccessLevel | None
    max_bytes: int
    known_fingerprint: str | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) the walk saw: what is read must be it


class ReadRefused(InvalidInput):
    """The file cannot be read as it is: too large, unreadable, not a file."""


class FileBusy(ReadRefused):
    """The file changed, moved or vanished while it was read: tried again next run."""


def read_document(source: Source) -> tuple[Document, ParsedDocument] | Unchanged | Rejection:
    """The document and its parsed text, Unchanged (fingerprint as recorded), or why it is refused."""
    try:
        data = read_stable(source.path, source.max_bytes, source.identity)
    except FileBusy as err:
        return Rejection(source.name, str(err), withdraw=False)
    except ReadRefused as err:
        return Rejection(source.name, str(err))
    content_sha256 = hashlib.sha256(data).hexdigest()
    fingerprint = _fingerprint(content_sha256, source)
    if fingerprint == source.known_fingerprint:
        return Unchanged(source.name)
    parser = parser_for(Path(source.name).suffix)
    try:
        parsed = parser.convert(data)
        resolved = decide(list(source.places), own_declarations(parsed), first_claims(parsed), source.default_level)
    except InvalidInput as err:  # LevelRefused, ParseError: either way this file's refusal
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


def own_declarations(parsed: ParsedDocument) -> list[Declaration]:
    """What the document itself declares: its front matter, and what its file's metadata names."""
    own = [parsed.front_matter] if parsed.front_matter is not None else []
    if parsed.metadata:
        own.append(named_in_metadata(parsed.metadata, "its file's metadata"))
    return own


def first_claims(parsed: ParsedDocument) -> list[Claim]:
    """The level claims in the document's first lines (and in what its parser read around the text)."""
    return claims(parsed.head, parsed.head_where) + claims(head(parsed.text), "its text, line")


def read_stable(path: Path, max_bytes: int, identity: tuple[int, int] | None = None) -> bytes:
    """The file's bytes, read without following a link; refused when larger than `max_bytes` or not
    a file; FileBusy when it is not the file the walk saw (`identity`) or changed while read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise FileBusy("vanished before it could be read") from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise FileBusy("changed while it was read (it is a link now): ingest again") from err
        raise ReadRefused(f"cannot read it ({err.strerror})") from err
    with os.fdopen(fd, "rb") as file:
        before = os.fstat(fd)
        if identity is not None and (before.st_dev, before.st_ino) != identity:
            raise FileBusy("changed while it was read (another file is in its place now): ingest again")
        if not stat.S_ISREG(before.st_mode):
            raise ReadRefused("not a regular file")
        if before.st_size > max_bytes:
            raise ReadRefused(_too_large(before.st_size, max_bytes))
        try:
            # As much as fstat says, plus one byte to notice a file still growing: read(n) sets
            # n bytes aside first, so n = the size limit would cost it on every file.
            data = file.read(min(max_bytes, before.st_size) + 1)
        except OSError as err:
            raise ReadRefused(f"cannot read it ({err.strerror})") from err
        after = os.fstat(fd)
    if len(data) > max_bytes:
        raise ReadRefused(_too_large(len(data), max_bytes))
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or len(data) != after.st_size:
        raise FileBusy("changed while it was read: ingest again once it is written")
    return data


def _too_large(size: int, max_bytes: int) -> str:
    return f"larger than FLEET_MAX_FILE_MB ({size / 2**20:.1f} MB > {max_bytes / 2**20:.0f} MB)"


def _fingerprint(content_sha256: str, source: Source) -> str:
    parts = [f"parser {PARSER_VERSION}", content_sha256, f"--level {source.default_level}"]
    for place in source.places:
        parts.append(place.name)
        for declaration in (place.sidecar, place.inherited):
            if declaration is not None:
                parts.append(f"{declaration.source} {declaration.level} {declaration.error} {declaration.digest}")
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
