"""Word `.docx` through python-docx: paragraphs and tables in document order, headings
(Heading 1…9, or an outline level) for the section path; page headers and footers are not part
of the body and stay out of the text (what they say of the document's level is read, as are the
title, subject, keywords, category and status the author filled in). Word does not store pages,
so a .docx chunk has no page numbers."""

import io
import re
import zipfile

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from producer.parsers.base import Headings, ParsedDocument, ParseError, Parser, TextBuilder

# What a .docx may expand to, checked on the zip's directory before anything is inflated: its
# XML parts together (python-docx builds a tree of each: ~20x their size in memory), all its parts
# (images included), how many parts, and how much any large part may be compressed (a real
# document's XML inflates ~10x; a zip bomb's ~1000x).
MAX_XML_BYTES = 128 * 2**20
MAX_PACKAGE_BYTES = 1024 * 2**20
MAX_PARTS = 10_000
MAX_RATIO = 100
_RATIO_FROM_BYTES = 2**20
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)
_NS = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
# Page header and footer lines kept for the level claims (producer.declarations).
_MAX_FURNITURE_LINES = 200
_CORE_PROPERTIES = ("title", "subject", "keywords", "category", "content_status")


class DocxParser(Parser):
    suffixes = (".docx",)
    heavy = True

    def convert(self, data: bytes) -> ParsedDocument:
        _check_package(data)
        try:
            document = docx.Document(io.BytesIO(data))
            return _build(document)
        except ParseError:
            raise
        except Exception as err:  # python-docx raises KeyError, ValueError, lxml errors...: all mean "not Word"
            raise ParseError(f"not a readable Word .docx file ({err.__class__.__name__}: {err})") from err


def _check_package(data: bytes) -> None:
    """Every part bounded before any is inflated: a zip bomb is refused, whichever part it hides in."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            parts = package.infolist()
    except zipfile.BadZipFile as err:
        raise ParseError(f"not a Word .docx file, or truncated ({err})") from err
    if not any(part.filename == "word/document.xml" for part in parts):
        raise ParseError("not a Word .docx file (no word/document.xml inside)")
    if len(parts) > MAX_PARTS:
        raise ParseError(f"has {len(parts):,} parts (more than {MAX_PARTS:,}): refused as a zip bomb")
    for part in parts:
        if part.file_size > _RATIO_FROM_BYTES and part.file_size > MAX_RATIO * max(1, part.compress_size):
            ratio = part.file_size / max(1, part.compress_size)
            raise ParseError(
                f"{part.filename} is compressed {ratio:,.0f}:1 (more than {MAX_RATIO}:1): refused as a zip bomb"
            )
    xml = sum(part.file_size for part in parts if part.filename.endswith((".xml", ".rels")))
    if xml > MAX_XML_BYTES:
        raise ParseError(f"expands to {xml / 2**20:,.0f} MB of XML (at most {MAX_XML_BYTES // 2**20} MB): refused")
    total = sum(part.file_size for part in parts)
    if total > MAX_PACKAGE_BYTES:
        raise ParseError(f"expands to {total / 2**20:,.0f} MB (at most {MAX_PACKAGE_BYTES // 2**20} MB): refused")


def _build(document) -> ParsedDocument:
    builder, headings = TextBuilder(), Headings()
    style_levels: dict[str | None, int | None] = {}  # python-docx looks a style up slowly: once each
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            style_id = block._p.style
            if style_id not in style_levels:
                style_levels[style_id] = style_heading_level(block.style)
            level = style_levels[style_id] or _outline_level(block._p)
            if level is not None:
                headings.enter(level, block.text)
            builder.add(block.text, section=headings.path)
        elif isinstance(block, Table):
            builder.add("\n".join(table_rows(block)), section=headings.path)
    parsed = builder.build(_metadata(document.core_properties))
    parsed.head, parsed.head_where = page_furniture(document), "its page header or footer, line"
    return parsed


def _metadata(properties) -> dict:
    """What the author filled in: kept as metadata, and read for level names."""
    found = {}
    for name in _CORE_PROPERTIES:
        value = " ".join((getattr(properties, name) or "").split())[:1000]
        if value:
            found[name] = value
    return found


def page_furniture(document) -> list[tuple[int, str]]:
    """The lines of every page header and footer (first page, even pages, default), each once."""
    lines: dict[str, None] = {}
    for section in document.sections:
        for part in (
            section.first_page_header, section.header, section.even_page_header,
            section.first_page_footer, section.footer, section.even_page_footer,
        ):  # fmt: skip
            if part.is_linked_to_previous:
                continue  # no definition of its own: the previous section's, already read
            texts = [paragraph.text for paragraph in part.paragraphs]
            texts += [row for table in part.tables for row in table_rows(table)]
            for line in (line.strip() for text in texts for line in text.splitlines()):
                if line and len(lines) < _MAX_FURNITURE_LINES:
                    lines.setdefault(line[:1000])
    return list(enumerate(lines, 1))


def style_heading_level(style) -> int | None:
    """1–9 for a heading style: its name (Heading N), or its outline level, or its base style's."""
    while style is not None:
        match = _HEADING_STYLE.fullmatch(style.name or "")
        if match:
            return int(match.group(1))
        outline = _outline_level(style.element)
        if outline is not None:
            return outline
        style = style.base_style
    return None


def _outline_level(element) -> int | None:
    found = element.find(f"{_NS}pPr/{_NS}outlineLvl")
    if found is None:
        return None
    value = found.get(f"{_NS}val", "")
    # Levels 0–8 are headings 1–9; 9 means body text.
    return int(value) + 1 if value.isdigit() and int(value) < 9 else None


def table_rows(table: Table) -> list[str]:
    """Each row as `cell | cell | cell`; a merged cell counts once."""
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return rows
