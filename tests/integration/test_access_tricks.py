"""A careless editor or a hostile colleague with write access to a shared folder: each trick that
once made a restricted document searchable at public, ingested for real and checked in Milvus."""

import json
import os
import unicodedata
from contextlib import closing
from pathlib import Path

import docx
import pytest

from producer import commands
from producer import ingest as ingesting
from producer.walk import Walk
from tests.docgen import PdfPage, write_docx, write_pdf
from tests.integration.access import stored_levels, visible_at
from tests.integration.conftest import cli_env, run_cli
from workers.core.access import AccessLevel
from workers.core.stores import postgres

WELCOME = "Welcome to Sao Mai. The cafeteria opens at seven every weekday morning."
SECRET = "The board plans to acquire Blue River Freight in the third quarter for nine hundred billion dong."
FORGED = "x.md\nrefused y.md: all is well.md"
NFC_NAME = unicodedata.normalize("NFC", "Báo cáo quý.md")

# Front matter and first lines that declare director_only without being read as a declaration.
TRICKS = {
    "fullwidth.md": "---\nａｃｃｅｓｓ＿ｌｅｖｅｌ: ｄｉｒｅｃｔｏｒ＿ｏｎｌｙ\n---\n",
    "nested.md": "---\nsecurity: {access_level: director_only}\n---\n",
    "listed.md": "---\nclassification: [director_only]\n---\n",
    "toml.md": '+++\ntitle = "Q3"\naccess_level = "director_only"\n+++\n',
    "comment.md": "<!-- access_level: director_only -->\n",
    "bold.md": "# Q3\n\n**Access level:** director_only\n\n",
    "cyrillic.md": "---\ntags: [board, director_оnly]\n---\n",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tricks(root: Path, outside: Path) -> set[str]:
    """The folder of tricks; returns the documents that may be visible at public."""
    write(root / ".fleet.yaml", "access_level: public\n")
    write(root / "welcome.md", WELCOME)
    write(root / "secret/.fleet.yaml", "access_level: director_only\n")
    write(root / "secret/q3/report.md", SECRET)
    (root / "a-alias").symlink_to(root / "secret/q3")  # a folder link inside the folder
    write(root / "inner/secret.pdf.meta.yaml", "access_level: director_only\n")
    write_pdf(root / "inner/secret.pdf", [PdfPage([SECRET])])
    (root / "link.pdf").symlink_to(root / "inner/secret.pdf")  # a file link beside it
    for name, head in TRICKS.items():
        write(root / name, head + SECRET + "\n")
    write(root / NFC_NAME, SECRET)
    write(root / (unicodedata.normalize("NFD", NFC_NAME) + ".meta.yaml"), "access_level: director_only\n")
    write(outside / "passwd", "root:x:0:0:root:/root:/bin/bash\n")
    (root / "shadow.md").symlink_to(outside / "passwd")
    write(root / FORGED, WELCOME)
    return {"welcome.md", FORGED}


@pytest.fixture
def settings(make_settings, migrated_url):
    return make_settings(database_url=migrated_url, model="fake:64", chunk_min_tokens=10, chunk_max_tokens=40)


def test_a_folder_of_tricks_shows_nothing_restricted_at_public(settings, tmp_path):
    docs = tmp_path / "docs"
    may_be_public = tricks(docs, tmp_path / "outside")
    env = cli_env(settings)
    result = run_cli(env, "producer", "ingest", str(docs), "--json", check=False)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    refused = {item["path"]: item["reason"] for item in report["rejected"]}
    assert set(TRICKS) | {"shadow.md"} <= set(refused)
    assert visible_at(settings, AccessLevel.public) == may_be_public
    levels = stored_levels(settings)
    for name in ("secret/q3/report.md", "inner/secret.pdf", NFC_NAME):  # stored once, at the highest level
        assert levels[name] == {AccessLevel.director_only}, name
    assert not any(name.startswith(("a-alias/", "link.pdf")) for name in levels)
    with closing(postgres.connect(settings)) as conn:
        texts = " ".join(text for (text,) in conn.execute("SELECT text FROM chunks"))
    assert "root:x:0:0" not in texts


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_a_declaration_that_is_not_read_refuses_the_document(settings, tmp_path, trick):
    docs = tmp_path / "docs"
    write(docs / "welcome.md", WELCOME)
    write(docs / trick, TRICKS[trick] + SECRET + "\n")
    report = commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert [r.path for r in report.rejected] == [trick]
    assert visible_at(settings, AccessLevel.public) == {"welcome.md"}


def test_a_folder_link_is_stored_once_under_its_real_path_at_the_highest_level(settings, tmp_path):
    docs = tmp_path / "docs"
    write(docs / "secret/.fleet.yaml", "access_level: director_only\n")
    write(docs / "secret/q3/report.md", SECRET)
    (docs / "a-alias").symlink_to(docs / "secret/q3")  # sorts before secret/: walked first
    (docs / "secret/q3/up").symlink_to(docs / "public-copy")  # and the other way round
    write(docs / "public-copy/notes.md", WELCOME)
    report = commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert report.rejected == []
    assert stored_levels(settings) == {
        "secret/q3/report.md": {AccessLevel.director_only},
        "public-copy/notes.md": {AccessLevel.director_only},  # reached from inside secret/ too
    }


def test_a_file_link_gets_the_level_of_its_target(settings, tmp_path):
    docs = tmp_path / "docs"
    write(docs / "inner/secret.pdf.meta.yaml", "access_level: director_only\n")
    write_pdf(docs / "inner/secret.pdf", [PdfPage([SECRET])])
    (docs / "link.pdf").symlink_to(docs / "inner/secret.pdf")
    write(docs / "link.pdf.meta.yaml", "access_level: public\n")  # the link's own sidecar loses
    commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert stored_levels(settings) == {"inner/secret.pdf": {AccessLevel.director_only}}


@pytest.mark.parametrize("form", ["NFD", "NFC"])
def test_a_sidecar_in_another_unicode_form_is_the_document_s_own(settings, tmp_path, form):
    docs = tmp_path / "docs"
    other = "NFC" if form == "NFD" else "NFD"
    write(docs / unicodedata.normalize(other, NFC_NAME), SECRET)
    write(docs / (unicodedata.normalize(form, NFC_NAME) + ".meta.yaml"), "access_level: director_only\n")
    commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert stored_levels(settings) == {NFC_NAME: {AccessLevel.director_only}}


def test_a_newline_in_a_file_name_forges_no_output_line(settings, tmp_path):
    docs = tmp_path / "docs"
    write(docs / FORGED, "---\naccess_level: [public\n---\nBroken front matter.")  # refused, with its name
    write(docs / "fine.md", WELCOME)
    env = cli_env(settings)
    text = run_cli(env, "producer", "ingest", str(docs), "--level", "public", check=False)
    assert text.returncode == 3
    lines = text.stdout.splitlines()
    refusals = [line for line in lines if line.startswith("refused ")]
    assert len(refusals) == 1
    assert refusals[0].startswith("refused x.md\\nrefused y.md: all is well.md: front matter is not valid YAML")
    report = json.loads(
        run_cli(env, "producer", "ingest", str(docs), "--level", "public", "--json", check=False).stdout
    )
    assert report["rejected"][0]["path"] == "x.md\\nrefused y.md: all is well.md"
    for name in ("bidi\u202etxt.md", "esc\x1b[31m.md"):
        write(docs / name, "---\naccess_level: nope\n---\nText.")
    shown = run_cli(env, "producer", "ingest", str(docs), "--level", "public", check=False).stdout
    assert "\u202e" not in shown and "\x1b" not in shown
    assert "bidi\\u202etxt.md" in shown and "esc\\x1b[31m.md" in shown


def test_a_raised_and_broken_document_is_withdrawn_with_the_reason(settings, tmp_path):
    docs = tmp_path / "docs"
    write(docs / "memo.md", WELCOME + " " + SECRET)
    write(docs / "memo.md.meta.yaml", "access_level: public\n")
    write_pdf(docs / "plan.pdf", [PdfPage([SECRET])])
    commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert visible_at(settings, AccessLevel.public) == {"memo.md", "plan.pdf"}

    write(docs / "memo.md.meta.yaml", "access_level: director_only\n")  # raised...
    (docs / "memo.md").write_bytes(b"now with a \x00 NUL byte")  # ...and unreadable
    write(docs / "plan.pdf.meta.yaml", "access_level: director_only\n")
    (docs / "plan.pdf").write_bytes((docs / "plan.pdf").read_bytes()[:300])  # truncated
    report = commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert {r.path for r in report.rejected} == {"memo.md", "plan.pdf"}
    assert report.documents_withdrawn == 2
    withdrawn = {item["path"]: item["reason"] for item in report.to_dict()["withdrawn"]}
    assert "NUL" in withdrawn["memo.md"] and withdrawn["plan.pdf"].startswith("refused: ")
    assert stored_levels(settings) == {}


def test_a_file_swapped_for_a_link_while_the_ingest_runs_is_not_read(settings, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    write(docs / "a.md", WELCOME)
    write(docs / "b.md", WELCOME)
    write(docs / "c.md", WELCOME)
    write(tmp_path / "passwd", "root:x:0:0:root:/root:/bin/bash\n")

    class Swapping(Walk):
        def documents(self):
            for found in super().documents():
                if found.name == "b.md":  # the walk has seen the file; the reader has not yet
                    (docs / "b.md").unlink()
                    (docs / "b.md").symlink_to(tmp_path / "passwd")
                yield found

    monkeypatch.setattr(ingesting, "Walk", Swapping)
    report = commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert {r.path: r.reason for r in report.rejected}["b.md"].startswith("changed while it was read")
    with closing(postgres.connect(settings)) as conn:
        texts = " ".join(text for (text,) in conn.execute("SELECT text FROM chunks"))
    assert "root:x:0:0" not in texts


def test_a_folder_replaced_by_a_link_leaves_nothing_under_the_link_s_path(settings, tmp_path):
    docs = tmp_path / "docs"
    write(docs / "secret/.fleet.yaml", "access_level: director_only\n")
    write(docs / "secret/q3/report.md", SECRET)
    write(docs / "a-alias/report.md", SECRET)  # a copy, public: indexed under a-alias/
    commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert visible_at(settings, AccessLevel.public) == {"a-alias/report.md"}
    (docs / "a-alias/report.md").unlink()
    os.rmdir(docs / "a-alias")
    (docs / "a-alias").symlink_to(docs / "secret/q3")
    report = commands.ingest(settings, docs, AccessLevel.public, wait=False)
    assert [w.path for w in report.withdrawn] == ["a-alias/report.md"]
    assert visible_at(settings, AccessLevel.public) == set()
    assert stored_levels(settings) == {"secret/q3/report.md": {AccessLevel.director_only}}


def test_a_level_stated_outside_the_text_refuses_the_document(settings, tmp_path):
    """A running header, a page header, the author's keywords, a page's <header>: not text, still read."""
    docs = tmp_path / "docs"
    write(docs / "welcome.md", WELCOME)
    pages = [PdfPage([SECRET, f"Page {n} of the plan."]) for n in range(4)]
    write_pdf(docs / "running.pdf", pages, header="Classification: Director only")
    write_docx(docs / "header.docx", [("p", SECRET)], page_header="Access level: director_only")
    write_docx(docs / "keywords.docx", [("p", SECRET)], page_header=None)
    document = docx.Document(str(docs / "keywords.docx"))
    document.core_properties.keywords = "board; director_only"
    document.save(str(docs / "keywords.docx"))
    write(docs / "page.html", f"<html><body><header>Mức truy cập: director_only</header><p>{SECRET}</p></body></html>")
    report = commands.ingest(settings, docs, AccessLevel.public, wait=False)
    refused = {r.path: r.reason for r in report.rejected}
    assert set(refused) == {"running.pdf", "header.docx", "keywords.docx", "page.html"}
    assert refused["running.pdf"].startswith(
        "its running header or footer, page 1 says 'Classification: Director only'"
    )
    assert refused["header.docx"].startswith("its page header or footer, line 1 says")
    assert "keywords" in refused["keywords.docx"]
    assert "Mức truy cập" in refused["page.html"]
    assert visible_at(settings, AccessLevel.public) == {"welcome.md"}
