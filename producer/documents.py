"""Find documents under a path and read them: UTF-8, Unicode NFC, YAML front matter, access level.

A document without a valid access level is refused with a reason, never made public.
"""

import hashlib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from workers.access import AccessLevel
from workers.errors import InvalidInput

SUFFIXES = frozenset({".md", ".markdown", ".txt"})
LEVEL_KEY = "access_level"


@dataclass(frozen=True)
class Document:
    source_path: str  # relative to the ingested root, POSIX style: the document's identity
    body: str
    access_level: AccessLevel
    content_sha256: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def find_files(root: Path) -> Iterator[Path]:
    """Files with a supported suffix under the folder `root`, in a stable order."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in SUFFIXES and not _is_hidden(path.relative_to(root)):
            yield path


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def source_path(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_document(path: Path, root: Path, default_level: AccessLevel | None) -> Document | Rejection:
    """The document at `path`, or why it is refused."""
    name = source_path(path, root)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return Rejection(name, f"not UTF-8 text (byte {err.start}): convert it to UTF-8")
    except OSError as err:
        return Rejection(name, f"cannot read: {err.strerror}")
    text = unicodedata.normalize("NFC", raw.replace("\r\n", "\n"))
    try:
        front, body = split_front_matter(text)
        level = _resolve_level(front, default_level)
    except InvalidInput as err:
        return Rejection(name, str(err))
    if not body.strip():
        return Rejection(name, "empty document: nothing to embed")
    metadata = {key: value for key, value in front.items() if key != LEVEL_KEY}
    return Document(
        source_path=name,
        body=body,
        access_level=level,
        content_sha256=hashlib.sha256(text.encode()).hexdigest(),
        metadata=_json_safe(metadata),
    )


def split_front_matter(text: str) -> tuple[dict, str]:
    """YAML front matter (between `---` lines at the very top) and the body after it."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 3)
    if end == -1 or text[end + 4 : end + 5] not in ("\n", ""):
        raise InvalidInput("front matter opened with '---' but never closed")
    try:
        front = yaml.safe_load(text[4:end]) or {}
    except yaml.YAMLError as err:
        raise InvalidInput(f"front matter is not valid YAML: {err}") from err
    if not isinstance(front, dict):
        raise InvalidInput("front matter must be a YAML mapping")
    return front, text[end + 5 :]


def _resolve_level(front: dict, default_level: AccessLevel | None) -> AccessLevel:
    if LEVEL_KEY in front:
        return AccessLevel.parse(front[LEVEL_KEY])
    if default_level is not None:
        return default_level
    raise InvalidInput(
        f"no access level: add '{LEVEL_KEY}: <level>' to its front matter or pass --level "
        f"({', '.join(AccessLevel.names())})"
    )


def _json_safe(value: object) -> object:
    """YAML gives dates and other types JSON lacks: keep them as strings."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
