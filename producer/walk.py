"""Find the documents under the ingested folder, with the level declarations around each.

Symbolic links are followed only while they stay inside the folder, and a folder is read once
(a link that loops back is skipped). Hidden files and folders are passed over; control files
(`.fleet.yaml`, `NAME.EXT.meta.yaml`) are read, never ingested. Every other file is a document
(a supported suffix), skipped (unsupported, with why) or refused (with why): nothing is ignored
without a word. Names are NFC, so a name typed on two systems is one identity.
"""

import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from producer.documents import Rejection
from producer.levels import FOLDER_RULES, FOLDER_RULES_NAMES, SIDECAR_SUFFIXES, Declaration, read_control_file
from producer.parsers import SUFFIXES

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
    """A document to read: where it is, its identity, and what declares its level around it."""

    path: Path
    name: str
    sidecar: Declaration | None
    inherited: Declaration | None


@dataclass
class _Listing:
    """One folder's entries as `_folder` reads them: by name, and the sidecar-like names by their
    case-folded form (looked up per document instead of scanning the folder each time)."""

    prefix: str
    by_name: dict[str, os.DirEntry]
    sidecars: dict[str, list[str]] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)  # sidecars that belong to a document here

    def __post_init__(self) -> None:
        for name in self.by_name:  # in name order: so are the names listed for each form
            if _is_sidecar_name(name):
                self.sidecars.setdefault(name.casefold(), []).append(name)


@dataclass
class Walk:
    root: Path
    # Identities are `prefix` + the path under `root`; `.fleet.yaml` rules apply from `base` down
    # (a folder inside one ingested before: see roots.py).
    prefix: str = ""
    base: Path | None = None
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[Rejection] = field(default_factory=list)
    # Folders that could not be read: `--prune` keeps the documents under them.
    unreadable: list[str] = field(default_factory=list)
    _root_real: str = ""
    _base_real: str = ""  # control files above the root may live up to here
    _visited: set[str] = field(default_factory=set)
    _names: set[str] = field(default_factory=set)

    def documents(self) -> Iterator[Found]:
        """The documents under the root, in a stable order; refusals and skips are kept meanwhile."""
        self._root_real = os.path.realpath(self.root)
        self._base_real = os.path.realpath(self.base or self.root)
        yield from self._folder(self.root, self.prefix, self._rules_above())

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

    def _folder(self, path: Path, prefix: str, inherited: Declaration | None) -> Iterator[Found]:
        real = os.path.realpath(path)
        if real in self._visited:
            self.skipped.append(Rejection(prefix, "a link to a folder already read (a loop?): not read twice"))
            return
        self._visited.add(real)
        try:
            with os.scandir(path) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as err:
            self.rejected.append(Rejection(prefix or "./", f"cannot read this folder ({err.strerror})"))
            self.unreadable.append(prefix)
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
            kind = self._kind(entry, shown)
            if kind == "dir":
                yield from self._folder(Path(entry.path), shown + "/", inherited)
            elif kind == "file":
                found = self._document(entry, shown, listing, inherited)
                if found is not None:
                    yield found
        self._note_orphan_sidecars(listing)

    def _kind(self, entry: os.DirEntry, shown: str) -> str | None:
        """ "dir", "file" or None (refused or skipped: noted)."""
        try:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    self.rejected.append(Rejection(shown, "a symbolic link to something that does not exist"))
                    return None
                if os.path.commonpath([self._root_real, target]) != self._root_real:
                    self.rejected.append(
                        Rejection(shown, "a symbolic link that leaves the ingested folder: not followed")
                    )
                    return None
            mode = entry.stat().st_mode
        except OSError as err:
            self.rejected.append(Rejection(shown, f"cannot read it ({err.strerror})"))
            return None
        if stat.S_ISDIR(mode):
            return "dir"
        if not stat.S_ISREG(mode):
            self.skipped.append(Rejection(shown, "not a regular file (a device, socket or pipe)"))
            return None
        return "file"

    def _document(
        self, entry: os.DirEntry, shown: str, listing: _Listing, inherited: Declaration | None
    ) -> Found | None:
        suffix = Path(entry.name).suffix.lower()
        if suffix not in SUFFIXES:
            hint = _CONVERT_HINTS.get(suffix, f"supported: {', '.join(sorted(SUFFIXES))}")
            self.skipped.append(Rejection(shown, f"unsupported format {suffix or '(no suffix)'}: {hint}"))
            return None
        name = unicodedata.normalize("NFC", shown)
        if name in self._names:
            self.rejected.append(
                Rejection(shown, "another file has the same name once Unicode-normalised (NFC): rename one")
            )
            return None
        self._names.add(name)
        sidecar = self._sidecar(entry.name, listing)
        return Found(Path(entry.path), name, sidecar, inherited)

    def _sidecar(self, name: str, listing: _Listing) -> Declaration | None:
        """The document's own sidecar; a file that only looks like one (case, a missing suffix) refuses it."""
        by_name = listing.by_name
        exact = [name + suffix for suffix in SIDECAR_SUFFIXES if name + suffix in by_name]
        stem = Path(name).stem.casefold()
        wanted = {(base + suffix).casefold() for base in (name, stem) for suffix in SIDECAR_SUFFIXES}
        near = sorted(other for form in wanted for other in listing.sidecars.get(form, ()) if other not in exact)
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
        problem = self._control_file_problem(by_name[exact[0]])
        return (
            Declaration(source, error=problem) if problem else read_control_file(Path(by_name[exact[0]].path), source)
        )

    def _folder_rules(self, by_name: dict, prefix: str) -> Declaration | None:
        """The folder's `.fleet.yaml`, or an error when its rules cannot be read safely."""
        present = [name for name in FOLDER_RULES_NAMES if name in by_name]
        near = [
            name
            for name in by_name
            if name.casefold().lstrip("._-") in ("fleet.yaml", "fleet.yml") and name not in FOLDER_RULES_NAMES
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
            problem = self._control_file_problem(by_name[present[0]])
            rules = (
                Declaration(source, error=problem)
                if problem
                else read_control_file(Path(by_name[present[0]].path), source)
            )
        if rules is not None and rules.error:
            self.rejected.append(Rejection(rules.source, f"{rules.error} (documents relying on it are refused)"))
        return rules

    def _control_file_problem(self, entry: os.DirEntry) -> str | None:
        """Why a control file cannot be trusted (a link out of the folder, not a file), or None."""
        target = os.path.realpath(entry.path)
        if os.path.commonpath([self._base_real, target]) != self._base_real:
            return "a symbolic link that leaves the ingested folder"
        if not os.path.isfile(target):
            return "not a regular file"
        return None

    def _note_orphan_sidecars(self, listing: _Listing) -> None:
        for name in listing.by_name:
            if _is_sidecar_name(name) and name not in listing.claimed:
                document = name[: -len(next(s for s in SIDECAR_SUFFIXES if name.casefold().endswith(s)))]
                self.skipped.append(
                    Rejection(
                        listing.prefix + _display(name), f"a sidecar of {document!r}, which is not in this folder"
                    )
                )


def _is_sidecar_name(name: str) -> bool:
    return name.casefold().endswith(SIDECAR_SUFFIXES)


def _display(name: str) -> str:
    """The name as text; bytes that are not UTF-8 shown escaped (\\xff)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")
