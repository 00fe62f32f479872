"""Markdown and plain text: decoded (UTF-8, or UTF-16/32 with a byte-order mark), NFC, YAML front
matter read for the level (TOML and JSON front matter for level claims); markdown headings
(through markdown-it, so that a `#` inside a code block is no heading) give the section path."""

import codecs
import re
import unicodedata

from markdown_it import MarkdownIt

from producer.declarations import read_front_matter
from producer.parsers.base import Headings, Mark, ParsedDocument, ParseError, Parser

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_text(data: bytes) -> str:
    """The text of a text file: NFC, `\\n` line ends; binary or undecodable content is refused."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if encoding is None and b"\x00" in data:
        raise ParseError("binary content (NUL bytes), not text: is the suffix right?")
    try:
        text = data.decode(encoding or "utf-8")
    except UnicodeDecodeError as err:
        what = encoding or "UTF-8"
        raise ParseError(f"not valid {what} text (byte {err.start}): save it as UTF-8") from err
    if "\x00" in text:
        raise ParseError("binary content (NUL characters), not text: is the suffix right?")
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


# Blocks only: a heading's text is its inline token's raw content, and inline parsing would make
# a token of every word and dash of the document (14 million for 20 MB of `ab-`).
_BLOCKS_ONLY = MarkdownIt("commonmark").disable("inline")
# Markdown is parsed in segments of about this many characters, cut at a blank line outside any
# fenced code block: the parser's tokens (a copy of each block's text, and more) stay that small.
SEGMENT_CHARS = 1_000_000
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)


def _headings(body: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """(offset, level, title) of each heading of body[start:end]."""
    segment = body[start:end]
    tokens = _BLOCKS_ONLY.parse(segment)
    found = [(token.map[0], int(token.tag[1]), tokens[index + 1].content)
             for index, token in enumerate(tokens) if token.type == "heading_open" and token.map]  # fmt: skip
    offsets = _line_offsets(segment, [line for line, _, _ in found])
    return [(start + offset, level, title) for offset, (_, level, title) in zip(offsets, found, strict=True)]


def _segments(text: str, size: int = SEGMENT_CHARS) -> list[tuple[int, int]]:
    """Spans of `text` of about `size` characters, each ending at a blank line outside a fence."""
    spans, start, fence, scanned = [], 0, None, 0
    for blank in _BLANK_LINE.finditer(text, size):
        if blank.start() - start < size:
            continue
        fence, scanned = _fence_after(text, scanned, blank.start(), fence), blank.start()
        if fence is None:
            spans.append((start, blank.end()))
            start = blank.end()
    return [*spans, (start, len(text))] if start < len(text) or not spans else spans


def _fence_after(text: str, start: int, end: int, fence: str | None) -> str | None:
    """The code fence open at `end`, given the one open at `start` (None: none)."""
    for match in _FENCE.finditer(text, start, end):
        marker = match[1]
        if fence is None:
            fence = marker
        elif marker[0] == fence[0] and len(marker) >= len(fence):
            fence = None
    return fence


def _line_offsets(text: str, lines: list[int]) -> list[int]:
    """The offsets in `text` where the given (ascending, 0-based) lines begin."""
    offsets, line, offset = [], 0, 0
    for wanted in lines:
        while line < wanted:
            offset = text.index("\n", offset) + 1
            line += 1
        offsets.append(offset)
    return offsets


class PlainTextParser(Parser):
    suffixes = (".txt",)

    def convert(self, data: bytes) -> ParsedDocument:
        front = read_front_matter(decode_text(data))
        return ParsedDocument(front.body, [], {}, front.declaration, front.fenced)


class MarkdownParser(Parser):
    suffixes = (".md", ".markdown")

    def convert(self, data: bytes) -> ParsedDocument:
        front = read_front_matter(decode_text(data))
        return ParsedDocument(front.body, heading_marks(front.body), {}, front.declaration, front.fenced)


def heading_marks(body: str) -> list[Mark]:
    """A mark at each heading line, with the path of headings down to it."""
    found = [heading for start, end in _segments(body) for heading in _headings(body, start, end)]
    headings, marks = Headings(), []
    for offset, level, title in found:
        headings.enter(level, title)
        marks.append(Mark(offset, None, headings.path))
    if marks and marks[0].offset > 0:
        marks.insert(0, Mark(0, None, None))  # text before the first heading has no section
    return marks
