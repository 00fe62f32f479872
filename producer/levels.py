"""A document's access level, from the most specific declaration that makes one.

1. its own: YAML front matter (text formats) or its sidecar `NAME.EXT.meta.yaml`;
2. else the nearest `.fleet.yaml` in its folder or above, up to the ingested root;
3. else `producer ingest --level`; else the document is refused.

Access control fails closed: whatever looks like a level declaration and is not read as one (a
misspelt key, a level under another key, a fence that is not quite front matter, a control file
that cannot be read) refuses the documents that depend on it. It never lets them fall through
to a lower level.
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from producer.safe_yaml import MAX_YAML_BYTES, load_mapping
from workers.access import AccessLevel
from workers.errors import InvalidInput

LEVEL_KEY = "access_level"
FOLDER_RULES = ".fleet.yaml"
FOLDER_RULES_NAMES = (FOLDER_RULES, ".fleet.yml")
SIDECAR_SUFFIXES = (".meta.yaml", ".meta.yml")
# Values that only a level declaration would carry (`public` is a common word and can never leak).
_LEVEL_VALUES = {level.name for level in AccessLevel if level > AccessLevel.public}
_FENCE = "---"
_CLOSING_FENCE = re.compile(r"^(?:---|\.\.\.)[ \t]*$", re.MULTILINE)
_LOOSE_FENCE = re.compile(r"\A\s*---[ \t]*\n")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][\w \-]{1,40}?)\s*:\s*(.*?)\s*$")
# Lines at the top of a document searched for a level declaration outside front matter.
_HEAD_LINES = 12


class LevelRefused(InvalidInput):
    """The document's level cannot be told safely; the message says why and what to fix."""


@dataclass(frozen=True)
class Declaration:
    """What one source says about a document's level (None: nothing) and metadata."""

    source: str
    level: AccessLevel | None = None
    metadata: dict = field(default_factory=dict)
    error: str | None = None  # the source could not be read: whatever relies on it is refused
    digest: str = ""  # what a document's fingerprint covers of this source

    def refusal(self) -> str:
        return f"{self.source}: {self.error}"


@dataclass(frozen=True)
class Resolved:
    level: AccessLevel
    source: str
    metadata: dict


def declaration(mapping: dict, source: str, digest: str = "") -> Declaration:
    """The level and metadata in a YAML mapping; a near miss of `access_level` is an error."""
    for key, value in mapping.items():
        if key == LEVEL_KEY:
            continue
        if looks_like_level_key(key):
            return Declaration(
                source, error=f"key {key!r} looks like {LEVEL_KEY!r}: spell it {LEVEL_KEY}", digest=digest
            )
        if isinstance(value, str) and _normal(value) in _LEVEL_VALUES:
            return Declaration(
                source,
                error=f"key {key!r} holds the level {value!r}: declare it as '{LEVEL_KEY}: {value}'",
                digest=digest,
            )
    metadata = {key: value for key, value in mapping.items() if key != LEVEL_KEY}
    if LEVEL_KEY not in mapping:
        return Declaration(source, None, metadata, digest=digest)
    try:
        level = AccessLevel.parse(mapping[LEVEL_KEY])
    except InvalidInput as err:
        return Declaration(source, error=str(err), digest=digest)
    return Declaration(source, level, metadata, digest=digest)


def read_control_file(path: Path, source: str) -> Declaration:
    """A sidecar or `.fleet.yaml`: its declaration, or the reason it cannot be read."""
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            return Declaration(source, error=f"is larger than {MAX_YAML_BYTES // 1024} KB")
        raw = path.read_bytes()
    except OSError as err:
        return Declaration(source, error=f"cannot read it ({err.strerror})")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Declaration(source, error="is not UTF-8 text", digest=digest)
    try:
        return declaration(load_mapping(text, source), source, digest)
    except InvalidInput as err:
        return Declaration(source, error=str(err), digest=digest)


def split_front_matter(text: str) -> tuple[Declaration | None, str]:
    """The front matter's declaration (None without front matter) and the body after it.

    Raises LevelRefused for text that looks like a level declaration but is not front matter.
    """
    if not text.startswith(_FENCE + "\n"):
        _refuse_loose_declaration(text)
        return None, text
    closing = _CLOSING_FENCE.search(text, len(_FENCE) + 1)
    if closing is None:
        raise LevelRefused("front matter opened with '---' but never closed: add a '---' line after it")
    try:
        mapping = load_mapping(text[len(_FENCE) + 1 : closing.start()], "front matter")
    except InvalidInput as err:  # its level cannot be read: refused like a bad level
        raise LevelRefused(str(err)) from err
    found = declaration(mapping, "front matter")
    if found.error:
        raise LevelRefused(found.refusal())
    return found, text[closing.end() + 1 :]


def _refuse_loose_declaration(text: str) -> None:
    """Refuse a level declared where it is not read: a fence with trailing spaces or after blank
    lines, or `key: value` lines at the top without any fence."""
    loose = _LOOSE_FENCE.match(text)
    if loose:
        closing = _CLOSING_FENCE.search(text, loose.end())
        block = text[loose.end() : closing.start() if closing else len(text)]
        if _declares_level(block.splitlines()):
            raise LevelRefused(
                "front matter must start on the first line with exactly '---' (no spaces or blank lines "
                "before it, none after the dashes): as written, its access level would not be read"
            )
        return
    if _declares_level(text.splitlines()[:_HEAD_LINES]):
        raise LevelRefused("declares an access level outside front matter: put it between '---' lines at the very top")


def _declares_level(lines: list[str]) -> bool:
    for line in lines:
        match = _KEY_VALUE.match(line)
        if match and (
            _normal(match.group(1)) == LEVEL_KEY
            or looks_like_level_key(match.group(1))
            or _normal(match.group(2).strip("'\"")) in _LEVEL_VALUES
        ):
            return True
    return False


def looks_like_level_key(key: str) -> bool:
    """A key that is not `access_level` but close to it: other case, '-' or ' ' for '_', a typo."""
    if key == LEVEL_KEY:
        return False
    normal = _normal(key)
    return (
        _distance(normal, LEVEL_KEY) <= 2
        or _distance(normal.replace("_", ""), "accesslevel") <= 2
        or _distance(normal, "level") <= 1
    )


def _normal(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.strip().casefold())


def _distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (adjacent transpositions count as one edit)."""
    if abs(len(a) - len(b)) > 2:
        return 3  # farther than any near miss we look for
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            cost = char_a != char_b
            best = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                best = min(best, previous2[j - 2] + 1)
            current.append(best)
        previous2, previous = previous, current
    return previous[-1]


def resolve(own: list[Declaration], inherited: Declaration | None, default: AccessLevel | None) -> Resolved:
    """The level from the most specific declaration; raises LevelRefused when it cannot be told."""
    for item in own:
        if item.error:
            raise LevelRefused(item.refusal())
    metadata: dict = {}
    for item in own:
        metadata.update(item.metadata)
    declared = [item for item in own if item.level is not None]
    if len({item.level for item in declared}) > 1:
        named = " and ".join(f"{item.source} says {item.level.name}" for item in declared)
        raise LevelRefused(f"conflicting access levels: {named}; keep one")
    if declared:
        return Resolved(declared[0].level, declared[0].source, metadata)
    if inherited is not None:
        if inherited.error:
            raise LevelRefused(inherited.refusal())
        return Resolved(inherited.level, inherited.source, metadata)
    if default is not None:
        return Resolved(default, "--level", metadata)
    raise LevelRefused(
        f"no access level: add '{LEVEL_KEY}: <level>' to its front matter or to a sidecar NAME.EXT.meta.yaml, "
        f"put a {FOLDER_RULES} in its folder, or pass --level ({', '.join(AccessLevel.names())})"
    )
