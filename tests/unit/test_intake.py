"""Reading documents: stable bounded reads, fingerprints, chunks with places, the parser pool."""

import os
from pathlib import Path

import pytest

from producer import documents
from producer.chunking import ChunkLimits
from producer.declarations import Declaration
from producer.documents import Document, Rejection, Source, Unchanged, read_document, read_stable
from producer.intake import Intake, Prepared, prepare
from producer.levels import Place
from tests.docgen import PdfPage, html_page, write_docx, write_pdf
from tests.textgen import ENGLISH
from workers.core.access import AccessLevel
from workers.embedding.model_info import resolve_model

LIMITS = ChunkLimits(20, 60)
FAKE = resolve_model("fake")


def source(path: Path, name: str | None = None, sidecar=None, inherited=None, **overrides) -> Source:
    name = name or path.name
    values = {
        "path": path,
        "name": name,
        "places": (Place(name, sidecar, inherited),),
        "default_level": AccessLevel.employee_only,
        "max_bytes": 10 * 2**20,
        **overrides,
    }
    return Source(**values)


def folder(tmp_path: Path) -> list[Path]:
    pages = [PdfPage([ENGLISH[i], ENGLISH[i + 1]], [(0, f"Part {i}")]) for i in range(4)]
    return [
        write_pdf(tmp_path / "manual.pdf", pages),
        write_docx(tmp_path / "policy.docx", [("h1", "Policy"), ("p", ENGLISH[5]), ("p", ENGLISH[6])]),
        tmp_path / "page.html",
        tmp_path / "note.md",
    ]


def write_text_files(paths: list[Path]) -> None:
    paths[2].write_text(html_page("Page", [(1, "Backups", [ENGLISH[9]])]), encoding="utf-8")
    paths[3].write_text("---\naccess_level: manager_only\n---\n# Note\n\n" + ENGLISH[3] + "\n", encoding="utf-8")


def test_a_document_is_read_with_its_level_and_chunks_know_their_place(tmp_path):
    paths = folder(tmp_path)
    write_text_files(paths)
    outcome = prepare(source(paths[0]), LIMITS, FAKE)
    assert isinstance(outcome, Prepared)
    assert (outcome.document.access_level, outcome.document.level_source) == (AccessLevel.employee_only, "--level")
    assert outcome.chunks[0].page_start == 1 and outcome.chunks[-1].page_end == 4
    assert {chunk.section for chunk in outcome.chunks} <= {f"Part {i}" for i in range(4)}
    note = prepare(source(paths[3]), LIMITS, FAKE)
    assert (note.document.access_level, note.chunks[0].section) == (AccessLevel.manager_only, "Note")


def test_the_parser_pool_gives_the_same_outcomes_in_the_same_order(tmp_path):
    paths = folder(tmp_path)
    write_text_files(paths)
    sources = [source(path) for path in paths * 3]
    with Intake(1, LIMITS, FAKE) as inline, Intake(2, LIMITS, FAKE) as pooled:
        expected = list(inline.run(sources))
        got = list(pooled.run(sources))
    assert got == expected
    assert [outcome.document.source_path for outcome in got] == [path.name for path in paths * 3]


def crash_on_manual(source: Source, limits: ChunkLimits, model) -> object:
    """A parser that kills its process on one file, as a C library may on a hostile PDF."""
    if source.name == "manual.pdf":
        os._exit(9)
    return prepare(source, limits, model)


def test_a_parser_crash_costs_only_the_file_that_crashes_it(tmp_path):
    paths = folder(tmp_path)
    write_text_files(paths)
    with Intake(2, LIMITS, FAKE, work=crash_on_manual) as intake:
        outcomes = list(intake.run([source(path) for path in paths + paths]))
    crashed = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
    assert [r.path for r in crashed] == ["manual.pdf", "manual.pdf"]
    assert all("parser crashed" in r.reason for r in crashed)
    assert sum(isinstance(outcome, Prepared) for outcome in outcomes) == 6


def test_an_unchanged_fingerprint_is_not_parsed_again(tmp_path):
    path = write_pdf(tmp_path / "manual.pdf", [PdfPage([ENGLISH[0]])])
    first, _ = read_document(source(path))
    assert isinstance(first, Document)
    assert read_document(source(path, known_fingerprint=first.fingerprint)) == Unchanged("manual.pdf")
    sidecar = Declaration("manual.pdf.meta.yaml", AccessLevel.director_only, digest="abc")
    moved, _ = read_document(source(path, sidecar=sidecar, known_fingerprint=first.fingerprint))
    assert moved.access_level is AccessLevel.director_only and moved.fingerprint != first.fingerprint
    rules = Declaration("docs/.fleet.yaml", AccessLevel.manager_only, digest="def")
    assert read_document(source(path, inherited=rules, known_fingerprint=first.fingerprint)) != Unchanged("manual.pdf")


def test_every_refusal_withdraws_but_a_busy_file(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("---\nAccess_Level: director_only\n---\nSecret.\n")
    assert read_document(source(path)).withdraw
    path.write_text("   \n")
    assert read_document(source(path)).withdraw  # an empty file is no longer what was indexed
    path.write_bytes(b"text with a \x00 NUL")
    assert read_document(source(path)).withdraw
    big = read_document(source(path, max_bytes=4))
    assert "larger than" in big.reason and big.withdraw
    moved = read_document(source(path, identity=(0, 0)))
    assert "changed while it was read" in moved.reason and not moved.withdraw


def test_a_file_swapped_for_a_link_after_the_walk_is_not_read(tmp_path):
    from producer.walk import Walk

    (tmp_path / "docs").mkdir()
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "docs/b.md").write_text("A memo.")
    found = next(Walk(tmp_path / "docs").documents())
    (tmp_path / "docs/b.md").unlink()
    (tmp_path / "docs/b.md").symlink_to(outside)  # after the walk saw it, before it is read
    refused = read_document(source(found.path, found.name, identity=(found.device, found.inode)))
    assert isinstance(refused, Rejection) and "changed while it was read" in refused.reason
    (tmp_path / "docs/b.md").unlink()
    (tmp_path / "docs/b.md").write_text("A memo.")
    found = next(Walk(tmp_path / "docs").documents())
    (tmp_path / "docs/new.md").write_text("written meanwhile")
    (tmp_path / "docs/new.md").rename(tmp_path / "docs/b.md")  # another file in its place
    refused = read_document(source(found.path, found.name, identity=(found.device, found.inode)))
    assert "another file is in its place" in refused.reason


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * 2048)
    with pytest.raises(documents.ReadRefused, match="larger than FLEET_MAX_FILE_MB"):
        read_stable(path, 1024)


def test_a_file_that_vanishes_or_changes_while_read_is_refused(tmp_path, monkeypatch):
    with pytest.raises(documents.ReadRefused, match="vanished"):
        read_stable(tmp_path / "gone.md", 1024)
    path = tmp_path / "growing.md"
    path.write_text("first version")
    real_fstat = os.fstat

    def written_meanwhile(fd):  # a writer appends between our stat and the end of our read
        with open(path, "a") as file:
            file.write(" and more")
        return real_fstat(fd)

    monkeypatch.setattr(documents.os, "fstat", written_meanwhile)
    with pytest.raises(documents.ReadRefused, match="changed while it was read"):
        read_stable(path, 1024)
