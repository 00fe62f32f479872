"""What declares a document's level, read from YAML, front matter and a document's first lines.

Three things are read here, and `producer.levels.decide` judges them:
- a **declaration**: the one place a level is read from, `access_level: <level>` at the top of
  a YAML mapping (front matter, a sidecar `NAME.EXT.meta.yaml`, a folder's `.fleet.yaml`);
- what it **names** besides: every key and every string at any depth, and every line of the
  YAML text (comments too), folded as a reader sees them (`producer.lookalike`); a level named
  there higher than the level the document gets refuses it;
- **claims**: lines among a document's first ones that state a level (`Access level: …`,
  `<!-- access_level: … -->`, `**Classification:** …`, TOML or JSON front matter, a table row
  `| Access level | … |`); a claim that is not the level the document gets refuses it.

Anything that looks like the level key and is not exactly it (other case, other letters, a
typo, nested under another key) is an error: whatever relies on it is refused.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from producer.lookalike import distance, key_form, level_named, levels_named_in, words
from producer.safe_yaml import MAX_YAML_BYTES, load_mapping
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput

LEVEL_KEY = "access_level"
FOLDER_RULES = ".fleet.yaml"
FOLDER_RULES_NAMES = (FOLDER_RULES, ".fleet.yml")
SIDECAR_SUFFIXES = (".meta.yaml", ".meta.yml")
# Keys (folded) that mean "access level", English and Vietnamese: in YAML, a key that reads as
# one of them and is not exactly `access_level` is refused.
_LEVEL_KEYS = {
    key_form(key)
    for key in (
        "access level", "level", "security level", "clearance", "mức truy cập", "mức độ truy cập",
        "cấp truy cập", "cấp độ truy cập", "quyền truy cập", "mức bảo mật", "mức độ bảo mật",
    )
}  # fmt: skip
# Keys that introduce a level in a line of text: those, and words for how secret a text is.
_CLAIM_KEYS = _LEVEL_KEYS | {
    key_form(key)
    for key in ("classification", "security classification", "sensitivity", "confidentiality", "độ mật", "mức độ mật")
}
# A claim is a key, a separator and a level: `key: level`, `key = level`, `| key | level |`, `key — level`.
_SEPARATOR = re.compile(r"[:=|]|\s[-–—]\s")
# Non-blank lines at the top of a document's text read for claims.
HEAD_LINES = 10
# Front matter in other formats than YAML: read for claims only, up to its closing line.
_OTHER_FENCES = {"+++": "+++", ";;;": ";;;", "{": "}"}
_MAX_FENCED_LINES = 400
_YAML_FENCE = "---"
_YAML_CLOSING = re.compile(r"^(?:---|\.\.\.)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Declaration:
    """What one source says: its level (None: it declares none), its metadata, the highest level
    it names anywhere, or why it cannot be read (then whatever relies on it is refused)."""

    source: str
    level: AccessLevel | None = None
    metadata: dict = field(default_factory=dict)
    error: str | None = None
    named: AccessLevel | None = None
    named_where: str = ""
    digest: str = ""  # what a document's fingerprint covers of this source

    def refusal(self) -> str:
        return self.error if self.error.startswith(self.source) else f"{self.source}: {self.error}"


@dataclass(frozen=True)
class Claim:
    """A line of a document that states a level."""

    where: str
    line: str
    level: AccessLevel


def looks_like_level_key(key: str) -> bool:
    """A key that reads as `access_level` without being exactly it (case, dashes, letters, a typo)."""
    if key == LEVEL_KEY:
        return False
    form = key_form(key)
    return (
        distance(form, LEVEL_KEY) <= 2
        or distance(form.replace("_", ""), "accesslevel") <= 2
        or distance(form, "level") <= 1
        or form in _LEVEL_KEYS
    )


def examine(mapping: dict, source: str, text: str = "", digest: str = "") -> Declaration:
    """The declaration in a YAML mapping (`text`: its source, whose lines are read too)."""
    problem = _key_problem(mapping)
    if problem:
        return Declaration(source, error=problem, digest=digest)
    level = None
    if LEVEL_KEY in mapping:
        try:
            level = AccessLevel.parse(mapping[LEVEL_KEY])
        except InvalidInput as err:
            near = level_named(str(mapping[LEVEL_KEY]))
            hint = f" (it looks like {near.name}: write it exactly so)" if near else ""
            return Declaration(source, error=f"{err}{hint}", digest=digest)
    named, where = _highest_named(mapping)
    for claim in claims(numbered(text.splitlines()), "line"):
        if named is None or claim.level > named:
            named, where = claim.level, f"{claim.where} {claim.line!r}"
    metadata = {key: value for key, value in mapping.items() if key != LEVEL_KEY}
    return Declaration(source, level, metadata, named=named, named_where=where, digest=digest)


def _key_problem(mapping: dict, parent: str | None = None) -> str | None:
    """Why a key of `mapping` (at any depth) looks like the level key without being read as one."""
    for key, value in mapping.items():
        nested = parent is not None and (key == LEVEL_KEY or key_form(key) == LEVEL_KEY)
        if nested:
            return f"{LEVEL_KEY!r} is nested under {parent!r}, where it is not read: put it at the top"
        if looks_like_level_key(key):
            if parent is None:
                return f"key {key!r} looks like {LEVEL_KEY!r}: spell it {LEVEL_KEY}"
            return f"key {key!r} under {parent!r} looks like {LEVEL_KEY!r}, which is read only at the top"
        for child in _mappings_in(value):
            problem = _key_problem(child, key if parent is None else f"{parent}.{key}")
            if problem:
                return problem
    return None


def _mappings_in(value: object) -> list[dict]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [mapping for item in value for mapping in _mappings_in(item)]
    return []


def _highest_named(value: object, where: str = "") -> tuple[AccessLevel | None, str]:
    """The highest level named by any key or string in `value` except the declaration itself."""
    found: tuple[AccessLevel | None, str] = (None, "")
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not (where == "" and key == LEVEL_KEY):
                items += [(f"key {key!r}", key), (f"key {key!r}", item)]
    elif isinstance(value, list):
        items = [(where, item) for item in value]
    elif isinstance(value, str):
        levels = levels_named_in(value)
        return (max(levels), f"{where} {value[:80]!r}".strip()) if levels else found
    for place, item in items:
        level, at = _highest_named(item, place)
        if level is not None and (found[0] is None or level > found[0]):
            found = (level, at)
    return found


def named_in_metadata(metadata: dict, source: str) -> Declaration:
    """A parser's metadata (a PDF's title, an HTML page's <meta> tags) as a declaration that only names."""
    problem = _key_problem(metadata, parent=source) if metadata else None
    if problem:
        return Declaration(source, error=problem)
    named, where = _highest_named(metadata, "")
    return Declaration(source, named=named, named_where=where)


def read_control_file(path: Path, source: str) -> Declaration:
    """A sidecar or `.fleet.yaml` (`path`: its real path, opened without following a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if os.fstat(file.fileno()).st_size > MAX_YAML_BYTES:
                return Declaration(source, error=f"is larger than {MAX_YAML_BYTES // 1024} KB")
            raw = file.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        return Declaration(source, error=f"cannot read it ({err.strerror})")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Declaration(source, error="is not UTF-8 text", digest=digest)
    try:
        return examine(load_mapping(text, source), source, text, digest)
    except InvalidInput as err:
        return Declaration(source, error=str(err), digest=digest)


def folder_rules_error(rules: Declaration) -> Declaration:
    """A `.fleet.yaml` that names a level above the one it declares cannot be trusted."""
    if rules.error or rules.named is None or (rules.level is not None and rules.named <= rules.level):
        return rules
    declared = rules.level.name if rules.level is not None else "no level"
    return Declaration(
        rules.source,
        error=f"names {rules.named.name} ({rules.named_where}) but declares {declared}: declare the level it means",
        digest=rules.digest,
    )


@dataclass(frozen=True)
class FrontMatter:
    declaration: Declaration | None  # None: the text has no YAML front matter
    body: str
    fenced: list[tuple[int, str]]  # numbered lines of front matter in another format (TOML, JSON)


def read_front_matter(text: str) -> FrontMatter:
    """YAML front matter between `---` lines at the very top, and the body after it."""
    if not text.startswith(_YAML_FENCE + "\n"):
        return FrontMatter(None, text, _other_fence(text))
    closing = _YAML_CLOSING.search(text, len(_YAML_FENCE) + 1)
    if closing is None:
        error = "front matter opened with '---' but never closed: add a '---' line after it"
        return FrontMatter(Declaration("front matter", error=error), text, [])
    block = text[len(_YAML_FENCE) + 1 : closing.start()]
    try:
        declaration = examine(load_mapping(block, "front matter"), "front matter", block)
    except InvalidInput as err:
        declaration = Declaration("front matter", error=str(err))
    return FrontMatter(declaration, text[closing.end() + 1 :], [])


def _other_fence(text: str) -> list[tuple[int, str]]:
    lines = text.split("\n", _MAX_FENCED_LINES)[:_MAX_FENCED_LINES]
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    closing = _OTHER_FENCES.get(lines[start].strip()) if start is not None else None
    if closing is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() == closing), len(lines) - 1)
    return numbered([line[:1000] for line in lines[start : end + 1]], start + 1)


def head(text: str, count: int = HEAD_LINES) -> list[tuple[int, str]]:
    """The first `count` non-blank lines of `text`, numbered (blank lines push no claim out of reach)."""
    lines = []
    for number, line in enumerate(text.split("\n", 1000)[:1000], 1):
        if line.strip():
            lines.append((number, line[:1000]))
            if len(lines) == count:
                break
    return lines


def numbered(lines: list[str], first: int = 1) -> list[tuple[int, str]]:
    return list(enumerate(lines, first))


def claims(lines: list[tuple[int, str]], where: str) -> list[Claim]:
    """The (numbered) lines that state a level: a key and a separator, then a level name; any key
    where the level is above public (`Audience: managers only`), a level key for public."""
    found = []
    for number, line in lines:
        level = _claimed(line)
        if level is not None:
            found.append(Claim(f"{where} {number}", " ".join(line.split())[:160], level))
    return found


def _claimed(line: str) -> AccessLevel | None:
    for separator in _SEPARATOR.finditer(line):
        value = words(line[separator.end() :])[:2]
        if not value:
            continue
        level = level_named("_".join(value))
        if level is None:
            level = level_named(value[0])
        if level is None:
            continue
        key = words(line[: separator.start()])[-4:]
        if level > AccessLevel.public or any(
            "_".join(key[-n:]) in _CLAIM_KEYS or looks_like_level_key("_".join(key[-n:]))
            for n in range(1, len(key) + 1)
        ):
            return level
    return None
