import unicodedata

import pytest

from producer.documents import Document, Rejection, find_files, read_document, split_front_matter
from workers.access import AccessLevel
from workers.errors import InvalidInput


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_front_matter_level_wins_over_default(tmp_path):
    path = write(tmp_path / "a.md", "---\naccess_level: manager_only\ntitle: Budget\n---\nBody text.\n")
    doc = read_document(path, tmp_path, AccessLevel.public)
    assert isinstance(doc, Document)
    assert doc.access_level is AccessLevel.manager_only
    assert doc.metadata == {"title": "Budget"}
    assert doc.body == "Body text.\n"
    assert doc.source_path == "a.md"


def test_default_level_applies_without_front_matter(tmp_path):
    doc = read_document(write(tmp_path / "sub/b.txt", "Plain text."), tmp_path, AccessLevel.employee_only)
    assert doc.access_level is AccessLevel.employee_only
    assert doc.source_path == "sub/b.txt"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("No level at all.", "no access level"),
        ("---\naccess_level: secret\n---\nText", "unknown access level 'secret'"),
        ("---\naccess_level: [public]\n---\nText", "unknown access level"),
        ("---\naccess_level: public\nText without closing", "never closed"),
        ("---\naccess_level: public\n---\n   \n", "empty document"),
        ("---\n- a list\n---\nText", "YAML mapping"),
    ],
)
def test_refused_documents_say_why(tmp_path, text, reason):
    result = read_document(write(tmp_path / "x.md", text), tmp_path, None)
    assert isinstance(result, Rejection)
    assert reason in result.reason


def test_unknown_front_matter_level_is_refused_even_with_a_default(tmp_path):
    result = read_document(write(tmp_path / "x.md", "---\naccess_level: top\n---\nT"), tmp_path, AccessLevel.public)
    assert isinstance(result, Rejection)


def test_non_utf8_is_refused(tmp_path):
    path = write(tmp_path / "latin.txt", "Chính sách", encoding="utf-16")
    result = read_document(path, tmp_path, AccessLevel.public)
    assert isinstance(result, Rejection)
    assert "UTF-8" in result.reason


def test_nfc_normalisation_makes_decomposed_vietnamese_identical(tmp_path):
    text = "Chính sách nghỉ phép năm"
    composed = read_document(write(tmp_path / "a.md", unicodedata.normalize("NFC", text)), tmp_path, AccessLevel.public)
    decomposed = read_document(
        write(tmp_path / "b.md", unicodedata.normalize("NFD", text)), tmp_path, AccessLevel.public
    )
    assert composed.body == decomposed.body == unicodedata.normalize("NFC", text)
    assert composed.content_sha256 == decomposed.content_sha256


def test_find_files_keeps_supported_suffixes_and_skips_hidden(tmp_path):
    for name in ["a.md", "b.markdown", "c.txt", "d.pdf", ".hidden/e.md", "sub/f.MD"]:
        write(tmp_path / name, "x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_files(tmp_path)]
    assert found == ["a.md", "b.markdown", "c.txt", "sub/f.MD"]


def test_split_front_matter_without_front_matter():
    assert split_front_matter("# Title\n") == ({}, "# Title\n")


def test_access_level_parse():
    assert AccessLevel.parse("director_only") == 3
    assert AccessLevel.public < AccessLevel.employee_only < AccessLevel.manager_only < AccessLevel.director_only
    with pytest.raises(InvalidInput, match="use one of public, employee_only"):
        AccessLevel.parse("admin")
