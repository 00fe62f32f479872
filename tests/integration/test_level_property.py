"""A property of the one access decision, over random folders, checked against Milvus itself.

Each example builds a tree of folders with `.fleet.yaml` files (valid or near misses), documents
with front matter from a grammar of real and near-miss declarations (fullwidth, nested, lists,
TOML, comments, look-alike letters, loose fences), sidecars in NFC, NFD, other case or near-miss
names, file and folder links inside and outside the folder, and names with a newline; ingests it
at `--level public` (the lowest), with one document maybe swapped for a link out of the folder
between the walk and the read; then may raise a sidecar and break its document, and ingest again.

Two things are checked after each ingest:
- **safety**: no chunk is stored below the highest level that any declaration on any path to its
  document names, down to the first valid one (or the document is refused and has no chunk);
- **the rule, exactly**: a model of the documented rule, written here independently of
  `producer.levels`, says for each document "refused" or "stored at level L", and Milvus agrees.
  This is what makes the test fail when a rule that only turns a leak into a refusal elsewhere
  (look-alike sidecar names, nested keys) is taken out: `ops/access_mutations.py` shows it.
"""

import os
import unicodedata
from contextlib import closing
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from producer import commands
from producer import ingest as ingesting
from producer.walk import Walk
from tests.integration.access import stored_levels
from workers.core.access import AccessLevel
from workers.core.stores import postgres

LEVELS = list(AccessLevel)
PUBLIC = AccessLevel.public
FULLWIDTH = {ord(c): ord(c) + 0xFEE0 for c in "abcdefghijklmnopqrstuvwxyz_"}
CYRILLIC = str.maketrans("oaepc", "оаерс")
TEXT = "Quarterly figures for the logistics division and the plans of the board for the next year."
OUTSIDE = "root:x:0:0:root:/root:/bin/bash"
runs = count()


@dataclass(frozen=True)
class Said:
    """What one source says, as the rule reads it: `declares` a level, is an `error` (whatever
    relies on it is refused), only `names` a level (refused above it), or `claims` one in a line
    of text (refused unless it is the level the document gets)."""

    kind: str
    level: AccessLevel


# Front matter and first lines: text for a level, and how the rule reads it.
FRONT = {
    "valid": (lambda lv: f"---\naccess_level: {lv}\n---\n", "declares"),
    "fullwidth": (lambda lv: f"---\n{'access_level'.translate(FULLWIDTH)}: {lv.translate(FULLWIDTH)}\n---\n", "error"),
    "nested": (lambda lv: f"---\nsecurity: {{access_level: {lv}}}\n---\n", "error"),
    "key case": (lambda lv: f"---\nAccess_Level: {lv}\n---\n", "error"),
    "listed": (lambda lv: f"---\nclassification: [{lv}]\n---\n", "names"),
    "lookalike": (lambda lv: f"---\ntags: [board, {lv.translate(CYRILLIC)}]\n---\n", "names"),
    "yaml comment": (lambda lv: f"---\ntitle: Report\n# access_level: {lv}\n---\n", "names"),
    "toml": (lambda lv: f'+++\naccess_level = "{lv}"\n+++\n', "claims"),
    "comment": (lambda lv: f"<!-- access_level: {lv} -->\n", "claims"),
    "bold": (lambda lv: f"# Report\n\n**Access level:** {lv}\n\n", "claims"),
    "loose": (lambda lv: f"--- \naccess_level: {lv}\n---\n", "claims"),
}
TRICK_FRONTS = [name for name in FRONT if name != "valid"]
# Sidecar names for a document NAME: (name, matched as its sidecar? else a near miss: an error).
SIDECAR_NAMES = {
    "exact": (lambda name: f"{name}.meta.yaml", True),
    "nfd": (lambda name: unicodedata.normalize("NFD", name) + ".meta.yaml", True),
    "case": (lambda name: f"{name.upper()}.meta.yaml", True),
    "stem": (lambda name: f"{Path(name).stem}.meta.yaml", False),
    "fullwidth": (lambda name: f"{name}.ｍｅｔａ.yaml", False),
}
RULES_NAMES = {".fleet.yaml": True, "fleet.yaml": False, ".Fleet.yaml": False}


@dataclass
class Doc:
    folder: str
    name: str
    front: tuple[str, AccessLevel] | None
    sidecar: tuple[str, AccessLevel, bool] | None  # (naming, level, valid content)


@dataclass
class Tree:
    folders: list[str]
    rules: dict[str, tuple[str, AccessLevel, bool]]  # folder -> (file name, level, valid content)
    docs: list[Doc]
    links: list[tuple[str, str, str, AccessLevel | None]]  # (kind, folder, target, link sidecar level)
    made: list["Link"] = field(default_factory=list)


@dataclass(frozen=True)
class Link:
    kind: str  # file, folder, outside
    folder: str
    target: str  # a document's index, a folder
    sidecar: AccessLevel | None  # the link's own sidecar


level = st.sampled_from(LEVELS)
high = st.sampled_from([AccessLevel.manager_only, AccessLevel.director_only])
# Half the documents declare nothing or declare validly: tricks refuse, and a refused document
# proves nothing about the levels of stored ones.
fronts = st.one_of(
    st.none(),
    st.tuples(st.just("valid"), level),
    st.tuples(st.sampled_from(TRICK_FRONTS), st.one_of(level, high)),
)


@st.composite
def trees(draw) -> Tree:
    folders = {""}
    for folder in draw(st.lists(st.sampled_from(["a", "a/b", "a/b/e", "c", "c/d"]), max_size=4)):
        parts = folder.split("/")
        folders.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    folders_list = sorted(folders)
    rules = {}
    for folder in folders_list:
        if draw(st.booleans()):
            name = draw(st.sampled_from([".fleet.yaml", ".fleet.yaml", "fleet.yaml", ".Fleet.yaml"]))
            rules[folder] = (name, draw(level), draw(st.sampled_from([True, True, False])))
    docs = []
    for number in range(draw(st.integers(1, 5))):
        name = draw(st.sampled_from([f"doc-{number}.md", f"Báo cáo {number}.md", f"x{number}\nrefused y.md"]))
        sidecar = draw(
            st.none() | st.tuples(st.sampled_from(list(SIDECAR_NAMES)), st.one_of(level, high), st.booleans())
        )
        docs.append(Doc(draw(st.sampled_from(folders_list)), name, draw(fronts), sidecar))
    links = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["file", "file", "folder", "outside"]))
        folder = draw(st.sampled_from(folders_list))
        target = (
            draw(st.sampled_from(range(len(docs))))
            if kind == "file"
            else draw(st.sampled_from([f for f in folders_list if f and not _above(f, folder)] or [""]))
        )
        links.append((kind, folder, str(target), draw(st.none() | level | high)))
    return Tree(folders_list, rules, docs, links)


def _above(folder: str, other: str) -> bool:
    """`folder` is `other` or a folder above it."""
    return folder == "" or other == folder or other.startswith(folder + "/")


def write_tree(root: Path, tree: Tree, outside: Path) -> None:
    for folder in tree.folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for folder, (name, lv, valid) in tree.rules.items():
        (root / folder / name).write_text(f"{'access_level' if valid else 'acess_level'}: {lv.name}\n")
    for doc in tree.docs:
        write_doc(root, doc)
        if doc.sidecar:
            naming, lv, valid = doc.sidecar
            sidecar = root / doc.folder / SIDECAR_NAMES[naming][0](doc.name)
            sidecar.write_text(f"{'access_level' if valid else 'access_levle'}: {lv.name}\n", encoding="utf-8")
    outside.write_text(OUTSIDE + "\n")
    for number, (kind, folder, target, sidecar_level) in enumerate(tree.links):
        if kind == "folder" and target == "":
            continue
        name = f"dir-{number}" if kind == "folder" else f"link-{number}.md"
        if kind == "file":
            destination = root / tree.docs[int(target)].folder / tree.docs[int(target)].name
        else:
            destination = root / target if kind == "folder" else outside
        (root / folder / name).symlink_to(destination)
        if sidecar_level is not None and kind != "folder":
            (root / folder / f"{name}.meta.yaml").write_text(f"access_level: {sidecar_level.name}\n")
        tree.made.append(Link(kind, folder, target, sidecar_level if kind != "folder" else None))


def write_doc(root: Path, doc: Doc) -> None:
    head = FRONT[doc.front[0]][0](doc.front[1].name) if doc.front else ""
    (root / doc.folder / doc.name).write_text(head + TEXT + "\n", encoding="utf-8")


def swapping_walk(document: Path, target: Path) -> type[Walk]:
    """A walk that, once it has seen `document` and before it is read, replaces it with a link to
    `target` (a hostile colleague racing the ingest)."""
    real = os.path.realpath(document)

    class Swapping(Walk):
        def documents(self):
            for found in super().documents():
                if str(found.path) == real:
                    found.path.unlink()
                    found.path.symlink_to(target)
                yield found

    return Swapping


# -- the model of the rule ------------------------------------------------------------------------


def folder_said(tree: Tree, folder: str) -> Said | None:
    if folder not in tree.rules:
        return None
    name, lv, valid = tree.rules[folder]
    return Said("declares" if valid and RULES_NAMES[name] else "error", lv)


def own_said(doc: Doc, sidecar: Said | None) -> list[Said]:
    """What the document says of itself on one path: its front matter and its sidecar there."""
    said = [sidecar] if sidecar else []
    if doc.front:
        said.append(Said(FRONT[doc.front[0]][1], doc.front[1]))
    return said


def sidecar_said(doc: Doc) -> Said | None:
    if not doc.sidecar:
        return None
    naming, lv, valid = doc.sidecar
    return Said("declares" if valid and SIDECAR_NAMES[naming][1] else "error", lv)


def chains_to(tree: Tree, target: str) -> list[list[str]]:
    """Every chain of real folders (whose rules apply) by which a walk reaches the folder `target`:
    down into subfolders and through folder links, never into a folder above itself (a loop)."""
    found: list[list[str]] = []

    def visit(real: str, chain: list[str], above: tuple[str, ...]) -> None:
        if real in above:
            return
        chain = [*chain, real]
        if real == target:
            found.append(chain)
        below = [f for f in tree.folders if f and (f.rsplit("/", 1)[0] if "/" in f else "") == real]
        for folder in below + [link.target for link in tree.made if link.kind == "folder" and link.folder == real]:
            visit(folder, chain, (*above, real))

    visit("", [], ())
    return found


def paths_to(tree: Tree, doc: Doc) -> list[tuple[list[Said], list[str]]]:
    """(what the document says of itself there, the chain of folders) for every path to `doc`."""
    paths = [(own_said(doc, sidecar_said(doc)), chain) for chain in chains_to(tree, doc.folder)]
    for link in tree.made:
        if link.kind == "file" and tree.docs[int(link.target)] is doc:
            at_link = Said("declares", link.sidecar) if link.sidecar is not None else None
            paths += [(own_said(doc, at_link), chain) for chain in chains_to(tree, link.folder)]
    return paths


def lowest_safe_level(tree: Tree, doc: Doc) -> AccessLevel:
    """Safety alone: the highest level named on any path, from the most specific declarations
    down to the first valid one."""
    highest = PUBLIC
    for own, chain in paths_to(tree, doc):
        groups = [own] + [[s] for f in reversed(chain) if (s := folder_said(tree, f))]
        for group in groups:
            highest = max([highest] + [said.level for said in group])
            if any(said.kind == "declares" for said in group):
                break
    return highest


def rule_level(tree: Tree, doc: Doc) -> AccessLevel | None:
    """The documented rule, exactly: the level `doc` is stored at, or None when it is refused."""
    chosen, relied = None, []
    for own, chain in paths_to(tree, doc):
        if any(said.kind == "error" for said in own):
            return None
        declared = {said.level for said in own if said.kind == "declares"}
        if len(declared) > 1:
            return None  # two of its own declarations disagree
        rules = next((s for f in reversed(chain) if (s := folder_said(tree, f))), None)
        if declared:
            on_path = declared.pop()
        elif rules is None:
            on_path = PUBLIC  # --level public
        elif rules.kind == "error":
            return None
        else:
            on_path, own = rules.level, [*own, rules]
        chosen = on_path if chosen is None else max(chosen, on_path)
        relied += own
    if any((s.kind == "names" and s.level > chosen) or (s.kind == "claims" and s.level != chosen) for s in relied):
        return None
    return chosen


# -- the property ---------------------------------------------------------------------------------


@pytest.fixture
def corpus(make_settings, migrated_url, tmp_path):
    """Settings and a corpus folder ingested once, empty: each example's folder inside it gets
    identities of its own (`run-N/...`)."""
    fleet = make_settings(database_url=migrated_url, model="fake:32", chunk_min_tokens=5, chunk_max_tokens=40)
    root = tmp_path / "corpus"
    root.mkdir()
    commands.ingest(fleet, root, AccessLevel.public, wait=False)
    return fleet, root


def check(fleet, prefix: str, tree: Tree, report: ingesting.IngestReport, refused: tuple[Doc, ...] = ()) -> None:
    """Milvus against the rule; `refused`: documents that this run cannot read (broken, swapped)."""
    stored = stored_levels(fleet)
    assert "?orphan" not in stored, "a vector whose document is gone"
    docs = {
        f"{prefix}{doc.folder + '/' if doc.folder else ''}{unicodedata.normalize('NFC', doc.name)}": doc
        for doc in tree.docs
    }
    for path, levels in stored.items():
        if path.startswith(prefix):
            assert path in docs, f"{path} is stored under a path that is not its real one"
            safe = lowest_safe_level(tree, docs[path])
            assert min(levels) >= safe, f"{path} is stored at {min(levels)}, below {safe.name} named on its path"
    for path, doc in docs.items():
        wanted = None if any(doc is other for other in refused) else rule_level(tree, doc)
        got = stored.get(path)
        assert got == ({wanted} if wanted is not None else None), f"{path}: the rule says {wanted}, Milvus has {got}"
    event(f"{sum(path.startswith(prefix) for path in stored)} of {len(tree.docs)} documents stored")
    with closing(postgres.connect(fleet)) as conn:
        texts = " ".join(text for (text,) in conn.execute("SELECT text FROM chunks"))
    assert OUTSIDE not in texts, "a file outside the folder was indexed"
    listed = len(report.skipped) + len(report.rejected) + len(report.withdrawn)
    assert len("\n".join(report.lines()).splitlines()) == 1 + listed, "a name printed a line of its own"


def ingest(fleet, folder: Path, walk: type[Walk] = Walk) -> ingesting.IngestReport:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingesting, "Walk", walk)
        return commands.ingest(fleet, folder, AccessLevel.public, wait=False)


@settings(
    max_examples=int(os.environ.get("LEVEL_EXAMPLES", 150)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tree=trees(), swap=st.none() | st.integers(0, 4), raise_and_break=st.none() | st.integers(0, 4))
def test_no_chunk_is_stored_below_a_level_declared_on_its_path(corpus, tree, swap, raise_and_break):
    fleet, root = corpus
    prefix = f"run-{next(runs)}/"
    folder = root / prefix
    outside = root.parent / f"outside-{prefix.strip('/')}.md"
    write_tree(folder, tree, outside)
    swapped = tree.docs[swap] if swap is not None and swap < len(tree.docs) else None
    if swapped is None:
        check(fleet, prefix, tree, ingest(fleet, folder))
    else:
        walk = swapping_walk(folder / swapped.folder / swapped.name, outside)
        check(fleet, prefix, tree, ingest(fleet, folder, walk), refused=(swapped,))
        (folder / swapped.folder / swapped.name).unlink()  # the link goes, the document comes back
        write_doc(folder, swapped)
    if raise_and_break is None or raise_and_break >= len(tree.docs):
        return
    doc = tree.docs[raise_and_break]  # its sidecar raised to director_only, the file itself broken
    (folder / doc.folder / f"{doc.name}.meta.yaml").write_text("access_level: director_only\n")
    (folder / doc.folder / doc.name).write_bytes(b"now with a \x00 NUL byte")
    check(fleet, prefix, tree, ingest(fleet, folder), refused=(doc,))
