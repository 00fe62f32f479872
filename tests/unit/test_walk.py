"""Finding documents: links, loops, control files, odd names, unreadable folders."""

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from producer.walk import Walk
from tests.permissions import without_root_powers
from workers.core.access import AccessLevel


def write(path: Path, text: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def walk(root: Path) -> tuple[dict, dict, dict]:
    """(documents by name, refused {path: reason}, skipped {path: reason})."""
    found = Walk(root)
    documents = {doc.name: doc for doc in found.documents()}
    return documents, {r.path: r.reason for r in found.rejected}, {s.path: s.reason for s in found.skipped}


def test_documents_in_order_hidden_skipped_unsupported_listed(tmp_path):
    names = ["b.md", "a.txt", "sub/c.PDF", "sub/d.docx", "e.html", ".hidden/x.md", ".draft.md", "logo.png", "old.doc"]
    for name in names:
        write(tmp_path / name)
    documents, refused, skipped = walk(tmp_path)
    assert list(documents) == ["a.txt", "b.md", "e.html", "sub/c.PDF", "sub/d.docx"]
    assert refused == {}
    assert "unsupported format .png" in skipped["logo.png"]
    assert "save it as .docx" in skipped["old.doc"]


def test_links_out_of_the_folder_or_to_nowhere_are_refused(tmp_path):
    outside = write(tmp_path / "outside/passwords.txt", "root:x:0:0")
    docs = tmp_path / "docs"
    write(docs / "inside.md")
    (docs / "shadow.txt").symlink_to(outside)
    (docs / "etc").symlink_to(Path("/etc"))
    (docs / "gone.md").symlink_to(docs / "missing.md")
    (docs / "alias.md").symlink_to(docs / "inside.md")
    documents, refused, _ = walk(docs)
    assert set(documents) == {"inside.md"}  # stored once, under its real path
    assert [place.name for place in documents["inside.md"].places] == ["inside.md", "alias.md"]
    assert "leaves the ingested folder" in refused["shadow.txt"]
    assert "leaves the ingested folder" in refused["etc"]
    assert "does not exist" in refused["gone.md"]


def test_a_folder_link_that_loops_back_is_not_followed(tmp_path):
    write(tmp_path / "a/doc.md")
    (tmp_path / "a/loop").symlink_to(tmp_path)
    (tmp_path / "again").symlink_to(tmp_path / "a")
    found = Walk(tmp_path)
    documents = list(found.documents())
    assert [doc.name for doc in documents] == ["a/doc.md"]
    assert [place.name for place in documents[0].places] == ["a/doc.md", "again/doc.md"]
    assert found.aliases == ["again/doc.md"]
    assert {s.path for s in found.skipped} == {"a/loop/", "again/loop/"}


def test_a_link_gets_the_rules_of_both_places(tmp_path):
    write(tmp_path / "secret/.fleet.yaml", "access_level: director_only\n")
    write(tmp_path / "secret/q3/report.md")
    write(tmp_path / "inner/secret.pdf")
    write(tmp_path / "inner/secret.pdf.meta.yaml", "access_level: director_only\n")
    (tmp_path / "a-alias").symlink_to(tmp_path / "secret/q3")
    (tmp_path / "link.pdf").symlink_to(tmp_path / "inner/secret.pdf")
    write(tmp_path / "link.pdf.meta.yaml", "access_level: public\n")
    documents, refused, skipped = walk(tmp_path)
    assert set(documents) == {"secret/q3/report.md", "inner/secret.pdf"} and refused == {}
    report = documents["secret/q3/report.md"].places
    assert [p.name for p in report] == ["secret/q3/report.md", "a-alias/report.md"]
    assert report[0].inherited.source == "secret/.fleet.yaml"
    assert report[1].inherited is None  # no rules at the link's place: --level applies there
    pdf = documents["inner/secret.pdf"].places
    assert [(p.name, p.sidecar.level) for p in pdf] == [
        ("inner/secret.pdf", AccessLevel.director_only),
        ("link.pdf", AccessLevel.public),
    ]
    assert "link.pdf.meta.yaml" not in skipped  # the link's own sidecar


def test_links_into_hidden_folders_or_to_control_files_are_refused(tmp_path):
    write(tmp_path / ".private/secret.md")
    write(tmp_path / "doc.md")
    write(tmp_path / "doc.md.meta.yaml", "access_level: public\n")
    (tmp_path / "visible.md").symlink_to(tmp_path / ".private/secret.md")
    (tmp_path / "shown").symlink_to(tmp_path / ".private")
    (tmp_path / "rules.md").symlink_to(tmp_path / "doc.md.meta.yaml")
    documents, refused, skipped = walk(tmp_path)
    assert set(documents) == {"doc.md"}
    for name in ("visible.md", "shown/secret.md"):
        assert "not read where it lies" in refused[name]
    assert "unsupported format .yaml" in skipped["rules.md"]  # what it is where it lies


def test_a_tangle_of_links_is_refused_not_walked_for_ever(tmp_path):
    write(tmp_path / "0/doc.md")
    for depth in range(1, 7):  # each folder holds two links to the one before: 2**6 paths to 0/
        (tmp_path / str(depth)).mkdir()
        for copy in "ab":
            (tmp_path / str(depth) / copy).symlink_to(tmp_path / str(depth - 1))
    documents, refused, _ = walk(tmp_path)
    assert documents == {}
    assert any("more than 16 links" in reason for reason in refused.values())


def test_file_names_that_are_not_utf8_are_refused_escaped(tmp_path):
    write(tmp_path / "good.md")
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff name.md"), "w") as file:
        file.write("text")
    documents, refused, _ = walk(tmp_path)
    assert list(documents) == ["good.md"]
    assert refused == {"bad\\xff name.md": "the file name is not valid UTF-8: rename it"}
    json.dumps(refused)  # printable as JSON


def test_names_that_differ_only_in_unicode_form_or_case_are_refused(tmp_path):
    nfd = unicodedata.normalize("NFD", "nghỉ phép.md")
    write(tmp_path / nfd)
    write(tmp_path / unicodedata.normalize("NFC", "nghỉ phép.md"))
    write(tmp_path / "Plan.md")
    write(tmp_path / "plan.md")
    documents, refused, _ = walk(tmp_path)
    assert documents == {}  # which one a sidecar belongs to could not be told
    assert len(refused) == 4 and all("same name but for case or Unicode form" in r for r in refused.values())


def test_a_sidecar_named_in_nfd_or_other_case_is_the_document_s(tmp_path):
    name = unicodedata.normalize("NFC", "Báo cáo quý.pdf")
    write(tmp_path / name)
    write(tmp_path / (unicodedata.normalize("NFD", name) + ".meta.yaml"), "access_level: director_only\n")
    write(tmp_path / "plan.docx")
    write(tmp_path / "Plan.DOCX.meta.yaml", "access_level: manager_only\n")
    documents, refused, skipped = walk(tmp_path)
    assert documents[name].places[0].sidecar.level is AccessLevel.director_only
    assert documents["plan.docx"].places[0].sidecar.level is AccessLevel.manager_only
    assert refused == {} and skipped == {}


def test_sidecars_and_folder_rules_are_found_and_never_documents(tmp_path):
    write(tmp_path / ".fleet.yaml", "access_level: employee_only\n")
    write(tmp_path / "board/.fleet.yaml", "access_level: director_only\n")
    write(tmp_path / "board/minutes.pdf")
    write(tmp_path / "board/minutes.pdf.meta.yaml", "access_level: manager_only\ntitle: Minutes\n")
    write(tmp_path / "board/agenda.docx")
    write(tmp_path / "memo.md")
    write(tmp_path / "ghost.pdf.meta.yaml", "access_level: public\n")
    documents, refused, skipped = walk(tmp_path)
    assert set(documents) == {"board/minutes.pdf", "board/agenda.docx", "memo.md"}
    minutes = documents["board/minutes.pdf"].places[0]
    assert (minutes.sidecar.level, minutes.sidecar.metadata) == (AccessLevel.manager_only, {"title": "Minutes"})
    assert minutes.inherited.source == "board/.fleet.yaml"
    assert documents["board/agenda.docx"].places[0].inherited.level is AccessLevel.director_only
    assert documents["memo.md"].places[0].inherited.level is AccessLevel.employee_only
    assert documents["memo.md"].places[0].sidecar is None
    assert refused == {}
    assert "sidecar of 'ghost.pdf'" in skipped["ghost.pdf.meta.yaml"]


def test_look_alike_control_files_refuse_what_depends_on_them(tmp_path):
    write(tmp_path / "hr/fleet.yaml", "access_level: director_only\n")  # missing the dot
    write(tmp_path / "hr/salaries.pdf")
    write(tmp_path / "report.pdf")
    write(tmp_path / "report.meta.yaml", "access_level: director_only\n")  # missing .pdf
    write(tmp_path / "plan.docx")
    write(tmp_path / "plan.docx.ｍｅｔａ.yaml", "access_level: director_only\n")  # fullwidth letters
    documents, refused, _ = walk(tmp_path)
    assert "looks like one" in documents["hr/salaries.pdf"].places[0].inherited.error
    assert "looks like its sidecar" in documents["report.pdf"].places[0].sidecar.error
    assert "looks like its sidecar" in documents["plan.docx"].places[0].sidecar.error
    assert "documents relying on it are refused" in refused["hr/.fleet.yaml"]


def test_a_broken_folder_rules_file_is_listed_and_inherited_as_an_error(tmp_path):
    write(tmp_path / "a/.fleet.yaml", "access_level: [director_only\n")
    write(tmp_path / "a/b/doc.md")
    documents, refused, _ = walk(tmp_path)
    assert documents["a/b/doc.md"].places[0].inherited.error
    assert "not valid YAML" in refused["a/.fleet.yaml"]


def test_fifos_are_skipped_not_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.md")
    write(tmp_path / "real.md")
    documents, _, skipped = walk(tmp_path)
    assert list(documents) == ["real.md"] and "not a regular file" in skipped["pipe.md"]


_WALK = """
import json, sys
from producer.walk import Walk
walk = Walk(__import__("pathlib").Path(sys.argv[1]))
names = [doc.name for doc in walk.documents()]
refused = {r.path: r.reason for r in walk.rejected}
print(json.dumps({"documents": names, "refused": refused, "unreadable": walk.unreadable}))
"""


def test_an_unreadable_folder_is_refused_and_remembered(tmp_path):
    write(tmp_path / "open/doc.md")
    write(tmp_path / "locked/secret.md")
    os.chmod(tmp_path / "locked", 0o000)
    try:
        result = subprocess.run(
            [*without_root_powers(), sys.executable, "-c", _WALK, str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            check=True,
        )
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    seen = json.loads(result.stdout)
    assert seen["documents"] == ["open/doc.md"]
    assert "cannot read this folder" in seen["refused"]["locked/"]
    assert seen["unreadable"] == ["locked/"]


def test_missing_and_unreadable_roots(tmp_path):
    with pytest.raises(FileNotFoundError):
        os.scandir(tmp_path / "nope")  # the walk itself refuses: the command checks the root first
    documents, refused, _ = walk(tmp_path / "nope")
    assert documents == {} and "cannot read this folder" in refused["./"]
