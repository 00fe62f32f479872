"""The one access decision: the level a document is indexed at, or why it is refused.

Every document reaches the index through `decide`, and the rule is this:

1. On each path that reaches the document (its real path, and every link inside the ingested
   folder that leads to it or to a folder above it), the most specific valid declaration wins:
   the document's own (YAML front matter, or its sidecar `NAME.EXT.meta.yaml` at that place),
   else the nearest `.fleet.yaml` on that path, up to the ingested root, else `--level`.
2. A document reached by more than one path gets the **highest** level of those paths.
3. Fail closed: the document is refused, with the reason, when
   - a declaration it relies on cannot be read (a bad value, a key that only looks like
     `access_level` or is nested under another, a fence that is not quite front matter, a
     control file that cannot be read), or two of its own declarations disagree;
   - a declaration it relies on names, anywhere (a key, a value at any depth, a comment), a
     level above the one it gets;
   - one of its first lines claims a level (`Access level: …`, `<!-- access_level: … -->`,
     TOML or JSON front matter) other than the one it gets;
   - nothing declares a level and no `--level` is given.

Names are compared folded (`producer.lookalike`): fullwidth, look-alike and other-case
spellings of a level or of the key are the same words to a reader, so they are to this rule.
"""

from dataclasses import dataclass

from producer.declarations import LEVEL_KEY, Claim, Declaration
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput


class LevelRefused(InvalidInput):
    """The document's level cannot be told safely; the message says why and what to fix."""


@dataclass(frozen=True)
class Place:
    """One path that reaches a document, and the declarations around it there."""

    name: str  # the path under the ingested root (through links, if any)
    sidecar: Declaration | None  # its sidecar at this place (or why it cannot be told)
    inherited: Declaration | None  # the nearest `.fleet.yaml` on this path (or why it cannot be read)


@dataclass(frozen=True)
class Resolved:
    level: AccessLevel
    source: str  # the declaration that gave the level
    metadata: dict


@dataclass(frozen=True)
class _PathLevel:
    level: AccessLevel
    source: str
    relied_on: list[Declaration]


def decide(places: list[Place], own: list[Declaration], claims: list[Claim], default: AccessLevel | None) -> Resolved:
    """The level of a document reached by `places` (the real one first), declaring `own` in
    itself (front matter, its file's metadata) and stating `claims` in its first lines; raises
    LevelRefused when it cannot be told safely."""
    if not places:
        raise LevelRefused("reached by no path inside the ingested folder")
    levels = [_on_path(place, own, default) for place in places]
    chosen = max(levels, key=lambda path: path.level)  # the first (the real path) among equals
    for path in levels:
        for declaration in path.relied_on:
            if declaration.named is not None and declaration.named > chosen.level:
                raise LevelRefused(
                    f"{declaration.source} names {declaration.named.name} ({declaration.named_where}) but the "
                    f"document would be {chosen.level.name}: declare '{LEVEL_KEY}: {declaration.named.name}' "
                    "or take the level name out"
                )
    for claim in claims:
        if claim.level != chosen.level:
            raise LevelRefused(
                f"{claim.where} says {claim.line!r}, but the document would be {chosen.level.name} "
                f"(from {chosen.source}); that line is not read as a declaration: declare "
                f"'{LEVEL_KEY}: {claim.level.name}' in front matter or a sidecar, or change the line"
            )
    source = chosen.source if len(places) == 1 else f"{chosen.source} (the highest of {len(places)} paths)"
    return Resolved(chosen.level, source, _metadata(places, own))


def _on_path(place: Place, own: list[Declaration], default: AccessLevel | None) -> _PathLevel:
    """The level on one path: the most specific valid declaration, and what it relied on."""
    mine = [*own, place.sidecar] if place.sidecar is not None else list(own)
    for declaration in mine:
        if declaration.error:
            raise LevelRefused(declaration.refusal())
    declared = [declaration for declaration in mine if declaration.level is not None]
    if len({declaration.level for declaration in declared}) > 1:
        named = " and ".join(f"{item.source} says {item.level.name}" for item in declared)
        raise LevelRefused(f"conflicting access levels: {named}; keep one")
    if declared:
        return _PathLevel(declared[0].level, declared[0].source, mine)
    rules = place.inherited
    if rules is not None:
        if rules.error:
            raise LevelRefused(rules.refusal())
        return _PathLevel(rules.level, rules.source, [*mine, rules])
    if default is not None:
        return _PathLevel(default, "--level", mine)
    raise LevelRefused(
        f"no access level: add '{LEVEL_KEY}: <level>' to its front matter or to a sidecar NAME.EXT.meta.yaml, "
        f"put a .fleet.yaml in its folder, or pass --level ({', '.join(AccessLevel.names())})"
    )


def _metadata(places: list[Place], own: list[Declaration]) -> dict:
    """Sidecar metadata (the real place's last, so it wins), then the document's own."""
    metadata: dict = {}
    for place in reversed(places):
        if place.sidecar is not None:
            metadata.update(place.sidecar.metadata)
    for declaration in own:
        metadata.update(declaration.metadata)
    return metadata
