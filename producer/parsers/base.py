"""The parser interface: bytes of one file in, text with its places (page, section) out.

A parser turns a file into one text, as paragraphs separated by blank lines, plus `marks`:
the offsets where the page or the heading path changes. The chunker cuts the text; each chunk
finds its page and section from the marks, so a citation survives chunking. A file that cannot
be converted raises ParseError with the reason, which becomes that file's refusal.
"""

import re
import unicodedata
from abc import ABC, abstractmethod
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property

from producer.declarations import Declaration
from workers.core.errors import InvalidInput

SECTION_SEPARATOR = " > "
# C0 controls other than tab and newline, and the non-characters some PDF producers emit.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")


class ParseError(InvalidInput):
    """The file cannot be converted to text (corrupt, encrypted, not what its suffix says...)."""


@dataclass(frozen=True)
class Mark:
    """From `offset` on, the text is on `page` (1-based, PDF only) under the heading path `section`."""

    offset: int
    page: int | None
    section: str | None


@dataclass(frozen=True)
class Place:
    page_start: int | None
    page_end: int | None
    section: str | None


@dataclass
class ParsedDocument:
    text: str
    marks: list[Mark] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    front_matter: Declaration | None = None  # text formats only
    # Numbered lines of the source outside the text, read for level claims (producer.declarations):
    # front matter in another format than YAML, an HTML page's comments, <meta> tags, header and
    # footer, a PDF's running headers and footers, a Word file's page headers and footers.
    head: list[tuple[int, str]] = field(default_factory=list)
    head_where: str = "its source, line"  # how a claim in `head` is located: "<head_where> <number>"

    def place(self, start: int, end: int) -> Place:
        """Where the span text[start:end] lies: first and last page, and the section at its start."""
        first, last = self._mark_at(start), self._mark_at(max(start, end - 1))
        return Place(
            first.page if first else None,
            last.page if last else None,
            first.section if first else None,
        )

    @cached_property
    def _offsets(self) -> list[int]:
        return [mark.offset for mark in self.marks]

    def _mark_at(self, offset: int) -> Mark | None:
        index = bisect_right(self._offsets, offset) - 1
        return self.marks[index] if index >= 0 else None


class Parser(ABC):
    """One format: the suffixes it accepts and how it converts a file's bytes."""

    suffixes: tuple[str, ...] = ()
    # Worth a process of its own (binary formats): text formats parse faster than they pickle.
    heavy = False

    def accepts(self, suffix: str) -> bool:
        return suffix.lower() in self.suffixes

    @abstractmethod
    def convert(self, data: bytes) -> ParsedDocument:
        """The file's text and places; raises ParseError when it cannot."""


def clean(text: str) -> str:
    """NFC (Vietnamese typed on different systems compares equal), no control characters."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


class Headings:
    """The heading path while walking a document: entering a level-n heading closes those at n and below."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))

    @property
    def path(self) -> str | None:
        return SECTION_SEPARATOR.join(title for _, title in self._stack) or None


class TextBuilder:
    """Joins paragraphs with blank lines, recording a mark wherever the page or section changes."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.marks: list[Mark] = []

    def add(self, paragraph: str, page: int | None = None, section: str | None = None) -> None:
        paragraph = clean(paragraph).strip()
        if not paragraph:
            return
        offset = self._length + (2 if self._parts else 0)
        if not self.marks or (self.marks[-1].page, self.marks[-1].section) != (page, section):
            self.marks.append(Mark(offset, page, section))
        self._parts.append(paragraph)
        self._length = offset + len(paragraph)

    def build(self, metadata: dict | None = None) -> ParsedDocument:
        return ParsedDocument("\n\n".join(self._parts), self.marks, metadata or {})
