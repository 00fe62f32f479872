"""Find the documents under the ingested folder, with the level declarations on every path to each.

A document is identified by its **real path** inside the folder (links resolved, NFC). Symbolic
links are followed while they stay inside the folder, and every path that reaches a document is
one `Place`: the sidecar beside it there and the nearest `.fleet.yaml` on that path. A document
that some link leads to (directly, or to a folder above it) is yielded once, after the walk has
seen every path to it, so that the access decision sees them all; the others stream as found. A
link that leaves the folder, dangles, or leads somewhere not read in its own place (a hidden
folder, a control file) is refused; a loop is not followed.

Hidden files and folders are passed over; control files (`.fleet.yaml`, `NAME.EXT.meta.yaml`)
are read, never ingested. A sidecar belongs to the document whose name it carries, compared NFC
and case-folded; a file that only looks like one refuses the document. Every other file is a
document (a supported suffix), skipped (unsupported, with why) or refused (with why).
"""

import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from producer.declarations import (
    FOLDER_RULES,
    FOLDER_RULES_NAMES,
    SIDECAR_SUFFIXES,
    Declaration,
    folder_rules_error,
    read_control_file,
)
from producer.documents import Rejection
from producer.levels import Place
from producer.lookalike import fold
from producer.parsers import SUFFIXES

# Paths (through links) that may reach one folder: beyond, what is under it is refused, so that
# a tangle of links can neither hide a path's level nor make the walk exponential.
MAX_PATHS = 16
# Formats people keep documents in that we do not read: the skip says what to do instead.
_CONVERT_HINTS = {
    ".doc": "old Word format: save it as .docx",
    ".rtf": "save it as .docx",
    ".odt": "save it as .docx",
    ".pages": "export it as .docx or PDF",
    ".xhtml": "save it as .html",
}


@dataclass(frozen=True)
class Found:
    """A document to read: its real file, its identity, every path to it, and the file the walk saw."""

    path: Path  # the real file, links resolved: read without following a link
    name: str  # identity: the prefix + its real path under the root, NFC
    places: tuple[Place, ...]  # its real path's first
    device: int  # what was read must be this file (st_dev, st_ino): else it changed meanwhile
    inode: int


@dataclass
class _Listing:
    """One folder's entries: by name, and the names of files that may be sidecars by their NFC
    case-folded form and by their look-alike form (looked up per document)."""

    prefix: str
    by_name: dict[str, os.DirEntry]
    sidecars: dict[str, list[str]] = field(default_factory=dict)
    lookalikes: dict[str, list[str]] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)  # sidecars that belong to a document here
    files: Counter = field(default_factory=Counter)  # NFC case-folded names: two alike are ambiguous

    def __post_init__(self) -> None:
        for name in self.by_name:  # in name order: so are the names listed for each form
            if _is_sidecar_name(name):
                self.sidecars.setdefault(_name_key(name), []).append(name)
                self.lookalikes.setdefault(fold(name), []).append(name)
            else:
                self.files[_name_key(name)] += 1


@dataclass
class Walk:
    root: Path
    # Identities are `prefix` + the path under `root`; `.fleet.yaml` rules apply from `base` down
    # (a folder inside one ingested before: see roots.py).
    prefix: str = ""
    base: Path | None = None
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[Rejection] = field(default_factory=list)
    # Folders that could not be read (identity prefixes): `--prune` keeps the documents under them.
    unreadable: list[str] = field(default_factory=list)
    # Names that reach a document through a link: not identities (an older index may hold them).
    aliases: list[str] = field(default_factory=list)
    _root_real: str = ""
    _base_real: str = ""  # control files above the root may live up to here
    _targets: set[str] = field(default_factory=set)  # real paths that links inside the root lead to
    _deferred: dict[str, list[tuple[Place, os.stat_result]]] = field(default_factory=dict)
    _visits: Counter = field(default_factory=Counter)
    _tangled: set[str] = field(default_factory=set)  # real folders reached by more than MAX_PATHS paths
    _identities: dict[str, str] = field(default_factory=dict)  # identity -> real path

    def documents(self) -> Iterator[Found]:
        """The documents under the root, in a stable order (those behind links last); refusals
        and skips are kept meanwhile."""
        self._root_real = os.path.realpath(self.root)
        self._base_real = os.path.realpath(self.base or self.root)
        self._targets = self._link_targets()
        yield from self._folder(self.root, self.prefix, self._root_real, self._rules_above(), ())
        yield from self._linked()

    def _link_targets(self) -> set[str]:
        """The real paths inside the root that a (visible) link inside the root leads to."""
        targets: set[str] = set()
        folders = [self._root_real]
        while folders:
            try:
                with os.scandir(folders.pop()) as scan:
                    for entry in scan:
                        if entry.name.startswith(".") or _is_sidecar_name(entry.name):
                            continue
                        if entry.is_symlink():
                            target = os.path.realpath(entry.path)
                            if _inside(self._root_real, target):
                                targets.add(target)
                        elif entry.is_dir(follow_symlinks=False):
                            folders.append(entry.path)
            except OSError:
                continue  # the walk itself refuses what cannot be read
        return targets

    def _rules_above(self) -> Declaration | None:
        """The rules inherited from the folders between `base` and the root (outermost first)."""
        inherited = None
        if self.base is None or self.prefix == "":
            return inherited
        folder, prefix = Path(self.base), ""
        for part in self.prefix.rstrip("/").split("/"):
            try:
                with os.scandir(folder) as scan:
                    by_name = {entry.name: entry for entry in scan}
            except OSError as err:
                return Declaration(prefix + FOLDER_RULES, error=f"cannot read {folder} ({err.strerror})")
            rules = self._folder_rules(by_name, prefix)
            if rules is not None and (rules.level is not None or rules.error):
                inherited = rules
            folder, prefix = folder / part, prefix + part + "/"
        return inherited

    def _folder(
        self, path: Path, prefix: str, real: str, inherited: Declaration | None, above: tuple[str, ...]
    ) -> Iterator[Found]:
        if real in above:
            self.skipped.append(Rejection(prefix, "a link to a folder above it (a loop): not followed", withdraw=False))
            return
        self._visits[real] += 1
        if self._visits[real] > MAX_PATHS:
            if real not in self._tangled:
                self._tangled.add(real)
                self.rejected.append(
                    Rejection(prefix, f"reached through more than {MAX_PATHS} links: what is under it is refused")
                )
            return
        try:
            with os.scandir(path) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as err:
            self.rejected.append(Rejection(prefix or "./", f"cannot read this folder ({err.strerror})", withdraw=False))
            self.unreadable.append(self._identity(real, folder=True))
            return
        listing = _Listing(prefix, {entry.name: entry for entry in entries})
        rules = self._folder_rules(listing.by_name, prefix)
        if rules is not None and (rules.level is not None or rules.error):
            inherited = rules
        for entry in entries:
            shown = prefix + _display(entry.name)
            # Control files are hidden (.fleet.yaml) or sidecars: read with their documents.
            if entry.name.startswith(".") or _is_sidecar_name(entry.name):
                continue
            if shown != prefix + entry.name:
                self.rejected.append(Rejection(shown, "the file name is not valid UTF-8: rename it"))
                continue
            kind, target, info = self._kind(entry, shown, real)
            if kind == "dir":
                yield from self._folder(Path(entry.path), shown + "/", target, inherited, (*above, real))
            elif kind == "file":
                yield from self._document(entry, shown, target, info, listing, inherited)
        self._note_orphan_sidecars(listing)

    def _kind(self, entry: os.DirEntry, shown: str, folder_real: str) -> tuple[str | None, str, os.stat_result | None]:
        """("dir" or "file", its real path, its stat), or (None, ...) when refused or skipped (noted)."""
        try:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    self.rejected.append(Rejection(shown, "a symbolic link to something that does not exist"))
                    return None, "", None
                if not _inside(self._root_real, target):
                    self.rejected.append(
                        Rejection(shown, "a symbolic link that leaves the ingested folder: not followed")
                    )
                    return None, "", None
            else:
                target = os.path.join(folder_real, entry.name)
            info = entry.stat()
        except OSError as err:
            self.rejected.append(Rejection(shown, f"cannot read it ({err.strerror})"))
            return None, "", None
        if stat.S_ISDIR(info.st_mode):
            return "dir", target, info
        if not stat.S_ISREG(info.st_mode):
            self.skipped.append(Rejection(shown, "not a regular file (a device, socket or pipe)"))
            return None, "", None
        return "file", target, info

    def _document(
        self,
        entry: os.DirEntry,
        shown: str,
        real: str,
        info: os.stat_result,
        listing: _Listing,
        inherited: Declaration | None,
    ) -> Iterator[Found]:
        suffix = Path(real).suffix.lower()
        if suffix not in SUFFIXES:
            hint = _CONVERT_HINTS.get(suffix, f"supported: {', '.join(sorted(SUFFIXES))}")
            self.skipped.append(Rejection(shown, f"unsupported format {suffix or '(no suffix)'}: {hint}"))
            return
        if listing.files[_name_key(entry.name)] > 1:
            self.rejected.append(
                Rejection(shown, "another file here has the same name but for case or Unicode form: rename one")
            )
            return
        place = Place(unicodedata.normalize("NFC", shown), self._sidecar(entry.name, listing), inherited)
        if self._covered(real):
            self._deferred.setdefault(real, []).append((place, info))
            return
        found = self._found(real, [(place, info)])
        if found is not None:
            yield found

    def _linked(self) -> Iterator[Found]:
        """The documents that links lead to, each with every path the walk saw to it."""
        for real, seen in self._deferred.items():
            found = self._found(real, seen)
            if found is not None:
                self.aliases += [place.name for place in found.places if place.name != found.name]
                yield found

    def _found(self, real: str, seen: list[tuple[Place, os.stat_result]]) -> Found | None:
        """The document at `real` with the places `seen`, or None when refused (noted)."""
        name = self._identity(real)
        at_home = [(place, info) for place, info in seen if place.name == name]
        refusal = self._refusal(real, name, seen, at_home)
        if refusal is not None:
            self.rejected += refusal
            return None
        place, info = at_home[0]
        others = tuple(other for other, _ in seen if other.name != name)
        return Found(Path(real), name, (place, *others), info.st_dev, info.st_ino)

    def _refusal(self, real: str, name: str, seen: list, at_home: list) -> list[Rejection] | None:
        if any(_inside(tangled, real) for tangled in self._tangled):
            reason = f"reached through more than {MAX_PATHS} links: refused until they are fewer"
            return [Rejection(place.name, reason) for place, _ in seen]
        if not at_home:
            reason = f"a link to {name}, which is not read where it lies (hidden, or a control file): not followed"
            return [Rejection(place.name, reason) for place, _ in seen]
        # Busy, not suspect: an indexed version is left as it was until the next run.
        if len({(info.st_dev, info.st_ino) for _, info in seen}) > 1:
            return [Rejection(name, "changed while the folder was read: ingest again", withdraw=False)]
        # The identity is another file's, which stays: only this one is refused.
        if self._identities.setdefault(name, real) != real:
            return [Rejection(name, "another file has the same name once NFC-normalised: rename one", withdraw=False)]
        return None

    def _covered(self, real: str) -> bool:
        """Whether a link leads to `real` or to a folder above it."""
        if not self._targets:
            return False
        path = real
        while _inside(self._root_real, path):
            if path in self._targets:
                return True
            if path == self._root_real:
                return False
            path = os.path.dirname(path)
        return False

    def _identity(self, real: str, folder: bool = False) -> str:
        relative = os.path.relpath(real, self._root_real)
        relative = "" if relative == "." else Path(relative).as_posix() + ("/" if folder else "")
        return unicodedata.normalize("NFC", self.prefix + _display(relative))

    def _sidecar(self, name: str, listing: _Listing) -> Declaration | None:
        """The document's own sidecar (NFC, case-folded); a file that only looks like one refuses it."""
        key = _name_key(name)
        exact = [other for suffix in SIDECAR_SUFFIXES for other in listing.sidecars.get(key + suffix, ())]
        wanted = {fold(base + suffix) for base in (name, Path(name).stem) for suffix in SIDECAR_SUFFIXES}
        near = sorted(other for form in wanted for other in listing.lookalikes.get(form, ()) if other not in exact)
        listing.claimed.update(exact + near)
        source = listing.prefix + (exact[0] if exact else name + SIDECAR_SUFFIXES[0])
        if near:
            return Declaration(
                source, error=f"found {near[0]!r}, which looks like its sidecar: name it {name}.meta.yaml"
            )
        if len(exact) > 1:
            return Declaration(source, error=f"two sidecars ({' and '.join(exact)}): keep one")
        if not exact:
            return None
        return self._control_file(listing.by_name[exact[0]], source)

    def _folder_rules(self, by_name: dict, prefix: str) -> Declaration | None:
        """The folder's `.fleet.yaml`, or an error when its rules cannot be read safely."""
        present = [name for name in FOLDER_RULES_NAMES if name in by_name]
        near = [
            name
            for name in by_name
            if fold(name).lstrip("._-") in ("fleet.yaml", "fleet.yml") and name not in FOLDER_RULES_NAMES
        ]
        source = prefix + (present[0] if present else FOLDER_RULES)
        rules = None
        if near:
            rules = Declaration(
                source, error=f"found {prefix + near[0]!r}, which looks like one: name it {FOLDER_RULES}"
            )
        elif len(present) > 1:
            rules = Declaration(source, error=f"both {' and '.join(present)} are here: keep one")
        elif present:
            rules = folder_rules_error(self._control_file(by_name[present[0]], source))
        if rules is not None and rules.error:
            self.rejected.append(
                Rejection(rules.source, f"{rules.error} (documents relying on it are refused)", withdraw=False)
            )
        return rules

    def _control_file(self, entry: os.DirEntry, source: str) -> Declaration:
        """A control file's declaration; one that is a link out of the folder or not a file is an error."""
        target = os.path.realpath(entry.path)
        if not _inside(self._base_real, target):
            return Declaration(source, error="a symbolic link that leaves the ingested folder")
        if not os.path.isfile(target):
            return Declaration(source, error="not a regular file")
        return read_control_file(Path(target), source)

    def _note_orphan_sidecars(self, listing: _Listing) -> None:
        for name in listing.by_name:
            if _is_sidecar_name(name) and name not in listing.claimed:
                suffix = next(s for s in SIDECAR_SUFFIXES if fold(name).endswith(s))
                document = name[: -len(suffix)] if name.casefold().endswith(suffix) else name
                self.skipped.append(
                    Rejection(
                        listing.prefix + _display(name),
                        f"a sidecar of {document!r}, which is not in this folder",
                        withdraw=False,
                    )
                )


def _inside(folder: str, path: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


def _name_key(name: str) -> str:
    """How documents and sidecars are matched: NFC (as macOS writes Vietnamese names, NFD, or
    not) and case-folded."""
    return unicodedata.normalize("NFC", name).casefold()


def _is_sidecar_name(name: str) -> bool:
    return fold(name).endswith(SIDECAR_SUFFIXES)


def _display(name: str) -> str:
    """The name as text; bytes that are not UTF-8 shown escaped (\\xff)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
