"""PDF through PDFium (pypdfium2): text page by page, each page closed before the next.

PDFium was chosen over pypdf for the same text at 15–20× the speed (ops/bench/parse.py), and
because it marks soft hyphens (U+FFFE), so end-of-line hyphenation is undone exactly. Lines are
joined into paragraphs; running headers and footers (lines repeating at the top or bottom of
most pages, page numbers included) are dropped; the outline (bookmarks) gives the section path.
"""

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import median

import pypdfium2 as pdfium

from producer.parsers.base import Headings, ParsedDocument, ParseError, Parser, TextBuilder

# Lines at each end of a page that may be a running header or footer.
_EDGE_LINES = 2
# A line repeating at the same end of at least 3 pages and this share of them is page furniture
# (a running header that names the chapter repeats on that chapter's pages only).
_REPEAT_SHARE = 0.1
_MIN_PAGES_FOR_REPEATS = 3
# A page number alone at the top or bottom of a page: 7, vii, - 7 -, Page 7, Page 7 of 12, 7/12.
_PAGE_NUMBER = re.compile(r"(?:page\s*)?(?:#|[ivxlc]+)(?:\s*(?:of|/)\s*#)?|[-–—]\s*#\s*[-–—]")
# Characters of section numbering before a bookmark's title on its heading line ("2.1.3 ").
_NUMBER_ROOM = 8
# Running lines kept for the level claims (producer.declarations), and the length of a metadata field.
_MAX_FURNITURE_LINES = 200
_MAX_FIELD_CHARS = 1000
_SOFT_HYPHENS = ("\ufffe", "\x02", "\xad")
_BULLET = re.compile(r"^(?:[•▪●◦■\-–*]|\d{1,3}[.)])\s")
_SENTENCE_END = ".!?:;"
# A line shorter than this share of the page's longest lines ends its paragraph if a sentence ends.
_SHORT_LINE = 0.85
_PDFIUM_ERRORS = {
    2: "cannot be opened",
    3: "is not a valid PDF (corrupt or truncated)",
    4: "is encrypted with a password: save a copy without it",
    5: "uses an unsupported security handler (DRM): save a copy without it",
    6: "has a broken page tree (corrupt)",
}


@dataclass(frozen=True)
class _Bookmark:
    level: int
    title: str
    page: int  # 0-based


class PdfParser(Parser):
    suffixes = (".pdf",)
    heavy = True

    def convert(self, data: bytes) -> ParsedDocument:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as err:
            reason = _PDFIUM_ERRORS.get(getattr(err, "err_code", None), f"cannot be read ({err})")
            raise ParseError(f"PDF {reason}") from err
        try:
            pages = [_page_lines(pdf, index) for index in range(len(pdf))]
            bookmarks = _bookmarks(pdf)
            metadata = _metadata(pdf)
            has_images = not any(pages) and _has_images(pdf)
        finally:
            pdf.close()
        if not any(pages):
            if has_images:
                raise ParseError("PDF has no text layer (a scan?): OCR is not supported, run it through OCR first")
            raise ParseError("PDF has no text")
        pages, furniture = drop_running_lines(pages)
        parsed = _build(pages, bookmarks, metadata)
        parsed.head, parsed.head_where = furniture, "its running header or footer, page"
        return parsed


def _metadata(pdf: pdfium.PdfDocument) -> dict:
    """The document information a person fills in: kept as metadata, and read for level names."""
    found = {}
    for key in ("Title", "Subject", "Keywords"):
        value = " ".join((pdf.get_metadata_value(key) or "").split())[:_MAX_FIELD_CHARS]
        if value:
            found[key.lower()] = value
    return found


def _page_lines(pdf: pdfium.PdfDocument, index: int) -> list[str]:
    page = pdf[index]
    try:
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_range()
        finally:
            textpage.close()
    finally:
        page.close()
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return [line for line in lines if line]


def _has_images(pdf: pdfium.PdfDocument) -> bool:
    page = pdf[0]
    try:
        return any(obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE for obj in page.get_objects(max_depth=2))
    finally:
        page.close()


def _bookmarks(pdf: pdfium.PdfDocument) -> list[_Bookmark]:
    found = []
    for bookmark in pdf.get_toc():
        dest = bookmark.get_dest()
        index = dest.get_index() if dest is not None else None
        title = " ".join(bookmark.get_title().split())
        if index is not None and title:
            found.append(_Bookmark(bookmark.level, title, index))
    return found


def _furniture_key(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.casefold().split()))


def drop_running_lines(pages: list[list[str]]) -> tuple[list[list[str]], list[tuple[int, str]]]:
    """Drop page numbers and the lines that repeat at the top or at the bottom of pages (digits
    compared as one), when the document has enough pages to tell; also returns the lines dropped,
    each once, with the (1-based) page it was first dropped from: a running header is not text,
    but what it says of the document's level is read."""
    if len(pages) < _MIN_PAGES_FOR_REPEATS:
        return pages, []
    tops = Counter(key for lines in pages for key in {_furniture_key(line) for line in lines[:_EDGE_LINES]})
    bottoms = Counter(key for lines in pages for key in {_furniture_key(line) for line in lines[-_EDGE_LINES:]})
    needed = max(_MIN_PAGES_FOR_REPEATS, _REPEAT_SHARE * len(pages))
    top_keys = {key for key, count in tops.items() if count >= needed or _PAGE_NUMBER.fullmatch(key)}
    bottom_keys = {key for key, count in bottoms.items() if count >= needed or _PAGE_NUMBER.fullmatch(key)}
    cleaned, dropped = [], {}
    for number, lines in enumerate(pages, 1):
        head, middle, tail = lines[:_EDGE_LINES], lines[_EDGE_LINES:-_EDGE_LINES], lines[-_EDGE_LINES:]
        if len(lines) <= 2 * _EDGE_LINES:
            head, middle, tail = lines[: len(lines) // 2], [], lines[len(lines) // 2 :]
        running = [(line, top_keys) for line in head] + [(line, bottom_keys) for line in tail]
        for line, keys in running:
            if _furniture_key(line) in keys and len(dropped) < _MAX_FURNITURE_LINES:
                dropped.setdefault(_furniture_key(line), (number, line[:1000]))
        head = [line for line in head if _furniture_key(line) not in top_keys]
        tail = [line for line in tail if _furniture_key(line) not in bottom_keys]
        cleaned.append(head + middle + tail)
    return cleaned, list(dropped.values())


def _build(pages: list[list[str]], bookmarks: list[_Bookmark], metadata: dict) -> ParsedDocument:
    builder, headings = TextBuilder(), Headings()
    by_page: dict[int, list[_Bookmark]] = {}
    for bookmark in bookmarks:  # once, not once per page: a manual has thousands of both
        by_page.setdefault(bookmark.page, []).append(bookmark)
    for index, lines in enumerate(pages):
        starts = _bookmark_lines(lines, by_page.get(index, []))
        for item in _paragraphs(lines, starts):
            if isinstance(item, _Bookmark):
                headings.enter(item.level, item.title)
            else:
                builder.add(item, index + 1, headings.path)
    return builder.build(metadata)


def _bookmark_lines(lines: list[str], on_page: list[_Bookmark]) -> dict[int, list[_Bookmark]]:
    """The line where each of the page's bookmarks starts: the line that is its title, else where
    the bookmark before it starts (the top of the page for the first)."""
    starts: dict[int, list[_Bookmark]] = {}
    cursor = 0
    for bookmark in on_page:
        key = _title_key(bookmark.title)
        found = next((i for i in range(cursor, len(lines)) if _is_title(lines[i], key)), None)
        cursor = cursor if found is None else found
        starts.setdefault(cursor, []).append(bookmark)
    return starts


def _title_key(text: str) -> str:
    return " ".join(text.casefold().split())


def _is_title(line: str, key: str) -> bool:
    """The line is the heading `key`, maybe after its number ("2.1 ASN.1 syntax")."""
    line_key = _title_key(line)
    return line_key == key or (line_key.endswith(" " + key) and len(line_key) - len(key) <= _NUMBER_ROOM)


def _paragraphs(lines: list[str], starts: dict[int, list[_Bookmark]]) -> Iterator[str | _Bookmark]:
    """The page's paragraphs (lines joined, hyphenation undone), with each bookmark where it starts;
    a heading line is a paragraph of its own."""
    current = ""
    wide = median(sorted(len(line) for line in lines)[len(lines) // 2 :]) if lines else 0
    for index, line in enumerate(lines):
        if index in starts:
            if current:
                yield current
            current = ""
            yield from starts[index]
            if any(_is_title(line, _title_key(bookmark.title)) for bookmark in starts[index]):
                yield line
                continue
        if current and _BULLET.match(line):
            yield current
            current = ""
        current = _join(current, line)
        if line[-1] in _SENTENCE_END and len(line) < _SHORT_LINE * wide:
            yield current
            current = ""
    if current:
        yield current


def _join(text: str, line: str) -> str:
    """Append a line: a soft hyphen or a hyphen before a lower-case letter joins the word again."""
    if not text:
        return line
    if text.endswith(_SOFT_HYPHENS):
        return text[:-1] + line
    if text.endswith("-") and len(text) > 1 and text[-2].isalpha() and line[:1].islower():
        return text[:-1] + line
    return f"{text} {line}"
