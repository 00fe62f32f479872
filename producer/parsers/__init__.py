"""Parsers by suffix: one module per format behind the interface of `base.py`."""

from producer.parsers.base import Mark, ParsedDocument, ParseError, Parser, Place
from producer.parsers.docx import DocxParser
from producer.parsers.html import HtmlParser
from producer.parsers.pdf import PdfParser
from producer.parsers.text import MarkdownParser, PlainTextParser

PARSERS: tuple[Parser, ...] = (MarkdownParser(), PlainTextParser(), PdfParser(), DocxParser(), HtmlParser())
SUFFIXES = frozenset(suffix for parser in PARSERS for suffix in parser.suffixes)
# Bumped when a parser's output or the level rules change, so that unchanged files are read (and
# judged) again once: 3, the one access decision (links, look-alikes, claims, HTML comments).
PARSER_VERSION = 3


def parser_for(suffix: str) -> Parser | None:
    """The parser of files ending in `suffix` (any case), or None when the format is not supported."""
    return next((parser for parser in PARSERS if parser.accepts(suffix)), None)


__all__ = [
    "PARSERS",
    "PARSER_VERSION",
    "SUFFIXES",
    "Mark",
    "ParseError",
    "ParsedDocument",
    "Parser",
    "Place",
    "parser_for",
]
