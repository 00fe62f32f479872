"""Each parser on real files written by the libraries people use: text, places, refusals."""

import codecs
import unicodedata
import zipfile

import pytest

from producer.parsers import ParseError, parser_for
from tests.docgen import PdfPage, html_page, write_docx, write_image_pdf, write_pdf

LEAVE = "Employees accrue one and a half days of annual leave for every month of service."
CARRY = "Unused leave may be carried over until the end of March of the following year."
TRAVEL = "Travel expenses are reimbursed within ten days of submitting valid receipts."


def convert(path):
    return parser_for(path.suffix).convert(path.read_bytes())


def place_of(parsed, sentence):
    start = parsed.text.index(sentence)
    return parsed.place(start, start + len(sentence))


# -- PDF ----------------------------------------------------------------------------------------


def handbook_pdf(path):
    pages = [
        PdfPage(["Staff handbook", "Sao Mai Logistics, 2025 edition."], [(0, "Staff handbook")]),
        PdfPage(["Leave policy", "1.1 Annual leave", LEAVE, CARRY], [(0, "Leave policy"), (1, "Annual leave")]),
        PdfPage(["The documentation of every absence is kept by HR, and the manage-", "ment reviews it monthly."]),
        PdfPage(["Expenses", TRAVEL], [(0, "Expenses")]),
        PdfPage(["Final page with the closing remarks of the handbook."]),
    ]
    return write_pdf(path, pages)


def test_pdf_text_page_by_page_with_sections_from_the_outline(tmp_path):
    parsed = convert(handbook_pdf(tmp_path / "handbook.pdf"))
    leave = place_of(parsed, LEAVE)
    assert (leave.page_start, leave.page_end, leave.section) == (2, 2, "Leave policy > Annual leave")
    travel = place_of(parsed, TRAVEL)
    assert (travel.page_start, travel.section) == (4, "Expenses")
    span = parsed.text.index(LEAVE), parsed.text.index(TRAVEL) + len(TRAVEL)
    assert (parsed.place(*span).page_start, parsed.place(*span).page_end) == (2, 4)


def test_pdf_running_header_and_page_numbers_are_dropped(tmp_path):
    parsed = convert(handbook_pdf(tmp_path / "handbook.pdf"))
    assert "Staff Handbook" not in parsed.text  # the running header on every page
    assert not any(line.strip().isdigit() for line in parsed.text.splitlines())


def test_pdf_end_of_line_hyphenation_is_undone(tmp_path):
    parsed = convert(handbook_pdf(tmp_path / "handbook.pdf"))
    assert "the management reviews it monthly" in parsed.text
    assert "manage-" not in parsed.text


def test_pdf_encrypted_with_an_empty_password_is_read(tmp_path):
    path = write_pdf(tmp_path / "locked.pdf", [PdfPage([LEAVE])], owner_password="owner-only")
    assert LEAVE in convert(path).text


def test_pdf_with_a_password_is_refused_with_advice(tmp_path):
    path = write_pdf(tmp_path / "secret.pdf", [PdfPage([LEAVE])], user_password="s3cret")
    with pytest.raises(ParseError, match="encrypted with a password"):
        convert(path)


def test_pdf_without_a_text_layer_says_ocr_is_not_supported(tmp_path):
    with pytest.raises(ParseError, match="OCR is not supported"):
        convert(write_image_pdf(tmp_path / "scan.pdf"))


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_pdf_corrupt_or_truncated_is_refused(tmp_path, cut):
    data = handbook_pdf(tmp_path / "whole.pdf").read_bytes()
    with pytest.raises(ParseError, match="not a valid PDF"):
        parser_for(".pdf").convert(data[: int(len(data) * cut)])


# -- Word ---------------------------------------------------------------------------------------


def policy_docx(path):
    return write_docx(
        path,
        [
            ("h1", "Leave policy"),
            ("p", "This policy applies to every employee."),
            ("h2", "Annual leave"),
            ("p", LEAVE),
            ("table", [["Grade", "Days"], ["Junior", "12"], ["Senior", "18"]]),
            ("h2", "Sick leave"),
            ("p", "Sick leave needs a doctor's note after two days."),
            ("h1", "Expenses"),
            ("p", TRAVEL),
        ],
        title="HR policies",
    )


def test_docx_headings_give_the_section_path(tmp_path):
    parsed = convert(policy_docx(tmp_path / "policy.docx"))
    assert place_of(parsed, LEAVE).section == "Leave policy > Annual leave"
    assert place_of(parsed, "Sick leave needs").section == "Leave policy > Sick leave"
    assert place_of(parsed, TRAVEL).section == "Expenses"
    assert place_of(parsed, TRAVEL).page_start is None  # Word does not store pages
    assert parsed.metadata == {"title": "HR policies"}


def test_docx_tables_are_rows_of_cells_and_page_headers_are_left_out(tmp_path):
    parsed = convert(policy_docx(tmp_path / "policy.docx"))
    assert "Grade | Days\nJunior | 12\nSenior | 18" in parsed.text
    assert "page header" not in parsed.text and "uncontrolled" not in parsed.text


def test_docx_that_is_not_word_or_is_truncated_is_refused(tmp_path):
    with pytest.raises(ParseError, match=r"not a Word \.docx file"):
        parser_for(".docx").convert(b"This is a text file renamed to .docx")
    data = policy_docx(tmp_path / "policy.docx").read_bytes()
    with pytest.raises(ParseError, match=r"not a Word \.docx file, or truncated"):
        parser_for(".docx").convert(data[: len(data) // 2])
    other = tmp_path / "sheet.docx"
    with zipfile.ZipFile(other, "w") as package:
        package.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(ParseError, match=r"no word/document\.xml"):
        convert(other)


# -- HTML ---------------------------------------------------------------------------------------


def test_html_main_text_with_heading_path_and_no_chrome(tmp_path):
    page = html_page(
        "Leave | Intranet",
        [(1, "Leave policy", ["This policy applies to every employee."]), (2, "Annual leave", [LEAVE, CARRY])],
    )
    path = tmp_path / "leave.html"
    path.write_text(page, encoding="utf-8")
    parsed = convert(path)
    assert place_of(parsed, CARRY).section == "Leave policy > Annual leave"
    for chrome in ("menu item", "tracking code", "Copyright footer", "Cookie banner", "Intranet home", "font-family"):
        assert chrome not in parsed.text
    assert parsed.metadata == {"title": "Leave | Intranet"}


def test_html_tables_and_declared_encoding(tmp_path):
    page = (
        '<html><head><meta charset="windows-1252"></head><body><h1>Barème salarial</h1>'
        "<table><tr><th>Échelon</th><th>Salaire</th></tr><tr><td>Débutant</td><td>10</td></tr></table></body></html>"
    )
    path = tmp_path / "bareme.htm"
    path.write_bytes(page.encode("cp1252"))
    parsed = convert(path)
    assert "Échelon | Salaire\nDébutant | 10" in parsed.text
    assert place_of(parsed, "Débutant | 10").section == "Barème salarial"


def test_html_without_text_is_refused_or_empty(tmp_path):
    with pytest.raises(ParseError):
        parser_for(".html").convert(b"   ")
    assert parser_for(".html").convert(b"<html><body><script>x()</script></body></html>").text == ""


# -- Markdown and text --------------------------------------------------------------------------


def test_markdown_headings_give_sections_but_not_inside_code(tmp_path):
    text = "Intro line.\n\n# Leave policy\n\n## Annual leave\n\n```\n# not a heading\n```\n\n" + LEAVE + "\n"
    path = tmp_path / "leave.md"
    path.write_text(text, encoding="utf-8")
    parsed = convert(path)
    assert place_of(parsed, LEAVE).section == "Leave policy > Annual leave"
    assert place_of(parsed, "# not a heading").section == "Leave policy > Annual leave"
    assert place_of(parsed, "Intro line.").section is None


@pytest.mark.parametrize(("encoding", "bom"), [("utf-16-le", codecs.BOM_UTF16_LE), ("utf-32-le", codecs.BOM_UTF32_LE)])
def test_utf16_and_utf32_with_a_byte_order_mark_are_decoded(tmp_path, encoding, bom):
    path = tmp_path / "note.txt"
    path.write_bytes(bom + "Chính sách nghỉ phép năm\r\n".encode(encoding))
    assert convert(path).text == "Chính sách nghỉ phép năm\n"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"text with a \x00 NUL byte", "binary content"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
        ("Chính sách".encode("cp1258"), "not valid UTF-8"),
    ],
)
def test_binary_and_undecodable_text_is_refused(data, reason):
    with pytest.raises(ParseError, match=reason):
        parser_for(".txt").convert(data)


def test_nfc_makes_vietnamese_typed_on_two_systems_one_text(tmp_path):
    text = "Chính sách nghỉ phép năm"
    composed = parser_for(".md").convert(unicodedata.normalize("NFC", text).encode())
    decomposed = parser_for(".md").convert(unicodedata.normalize("NFD", text).encode())
    assert composed.text == decomposed.text == unicodedata.normalize("NFC", text)
