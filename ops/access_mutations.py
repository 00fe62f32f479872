"""Take each rule of the one access decision out in turn and show that the tests notice.

For every mutation below, the tracked tree is copied to a temporary folder, one rule is removed
there (a literal edit of the source, refused loudly when the source no longer has the line), and
the access property test (`tests/integration/test_level_property.py`) and the named tricks
(`tests/integration/test_access_tricks.py`) run against the copy. A rule whose removal leaves
both passing is a rule nothing proves: the script exits 1 and names it.

    .venv/bin/python ops/access_mutations.py [--only NAME] [--json]

Needs what the tests need (Postgres and Redis on this machine); about a minute per mutation.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROPERTY = "tests/integration/test_level_property.py"
TRICKS = "tests/integration/test_access_tricks.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    rule: str  # which rule of issue 17's list it takes out
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation(
        "fold",
        "1: keys and values compared after NFKC, case folding and look-alike letters",
        "producer/lookalike.py",
        '    folded = unicodedata.normalize("NFKC", text).casefold()\n',
        "    return text\n",
    ),
    Mutation(
        "named-anywhere",
        "1: a level named by any key or string at any depth (or a YAML line) above the level refuses",
        "producer/declarations.py",
        '    named, where = _highest_named(mapping)\n    for claim in claims(numbered(text.splitlines()), "line"):',
        '    named, where = None, ""\n    for claim in []:',
    ),
    Mutation(
        "nested-and-near-keys",
        "1: a key that only looks like access_level, or is nested, refuses",
        "producer/declarations.py",
        "    problem = _key_problem(mapping)\n",
        "    problem = None\n",
    ),
    Mutation(
        "first-lines",
        "1: the first lines, TOML/JSON front matter and HTML comments are read for claims",
        "producer/documents.py",
        '    return claims(parsed.head, parsed.head_where) + claims(head(parsed.text), "its text, line")\n',
        "    return []\n",
    ),
    Mutation(
        "highest-path",
        "2: a document reached by several paths gets the highest of their levels",
        "producer/levels.py",
        "    chosen = max(levels, key=lambda path: path.level)",
        "    chosen = levels[0]",
    ),
    Mutation(
        "real-path",
        "2: a document is identified and stored once, under its real path",
        "producer/walk.py",
        "        if self._covered(real):\n",
        "        if False:\n",
    ),
    Mutation(
        "no-follow",
        "2: a file is opened without following a link and must be the file the walk saw",
        "producer/documents.py",
        "        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)\n",
        "        fd, identity = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), None\n",
    ),
    Mutation(
        "link-out",
        "2: a link out of the ingested folder stays refused",
        "producer/walk.py",
        "                if not _inside(self._root_real, target):\n",
        "                if False:\n",
    ),
    Mutation(
        "names-nfc",
        "3: sidecars and documents are matched by their NFC, case-folded names",
        "producer/walk.py",
        '    return unicodedata.normalize("NFC", name).casefold()\n',
        "    return name\n",
    ),
    Mutation(
        "names-escaped",
        "3: names shown to a person have control characters escaped",
        "producer/documents.py",
        "    return _UNPRINTABLE.sub(",
        "    return text or _UNPRINTABLE.sub(",
    ),
    Mutation(
        "withdraw",
        "4: an indexed document refused on a later run is withdrawn",
        "producer/ingest.py",
        "        if rejection.withdraw and rejection.path in known:\n",
        "        if False:\n",
    ),
]


def copy_tree(into: Path) -> None:
    """The tracked and untracked (not ignored) files of the repository, as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source, target = REPO / name, into / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def apply(tree: Path, mutation: Mutation) -> None:
    path = tree / mutation.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutation.old) != 1:
        raise SystemExit(f"mutation {mutation.name}: {mutation.path} no longer has its line once; update this script")
    path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")


def failed_tests(tree: Path, test: str) -> list[str]:
    """The tests of `test` that fail against `tree` (empty: all pass)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--tb=no", test],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 1):
        raise SystemExit(f"pytest could not run {test} ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr}")
    return [line.split(" ")[1] for line in result.stdout.splitlines() if line.startswith("FAILED ")]


def run(mutation: Mutation | None) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="access-mutation-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        if mutation is not None:
            apply(tree, mutation)
        property_failed = failed_tests(tree, PROPERTY)
        tricks_failed = failed_tests(tree, TRICKS)
    return {
        "mutation": mutation.name if mutation else "none",
        "rule": mutation.rule if mutation else "every rule in place",
        "property_test_fails": bool(property_failed),
        "named_tests_failing": [name.split("::")[-1] for name in tricks_failed],
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[m.name for m in MUTATIONS], help="one mutation (default: every one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only in (None, m.name)]
    results = [run(None)] + [run(mutation) for mutation in chosen]
    baseline, mutated = results[0], results[1:]
    unproven = [r["mutation"] for r in mutated if not r["property_test_fails"] and not r["named_tests_failing"]]
    if args.json:
        print(json.dumps({"results": results, "unproven": unproven}, indent=2))
    else:
        for r in results:
            caught = "FAILS" if r["property_test_fails"] else "passes"
            named = ", ".join(r["named_tests_failing"]) or "none"
            print(f"{r['mutation']:<22} property test {caught:<7} named tests failing: {named}  ({r['seconds']} s)")
            print(f"{'':<22} {r['rule']}")
    if baseline["property_test_fails"] or baseline["named_tests_failing"]:
        print("the tests fail with every rule in place: fix them first", file=sys.stderr)
        return 1
    if unproven:
        print(f"rules that no test proves: {', '.join(unproven)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
