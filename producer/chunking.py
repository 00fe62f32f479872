"""Split a document into chunks of `min_tokens`–`max_tokens` tokens of the model's tokenizer.

Text is cut into units — paragraphs, or the sentences of a paragraph too long to keep whole,
or token windows of a sentence too long to keep whole — and a dynamic programme picks where
chunks end: never over the limit, as few short chunks as possible, then as few breaks inside a
paragraph or right after a heading as possible. Chunks are spans of the original text.
"""

import itertools
import re
from dataclasses import dataclass

from workers.embedding.tokenizer import TokenCounter

_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?…。])[\"'”’)\]]*\s+")
_HEADING = re.compile(r"#{1,6}\s")
# Costs of a chunk in the plan: short chunks are avoided first, awkward breaks next.
_SHORT_CHUNK_COST = 1000.0
_BREAK_INSIDE_PARAGRAPH_COST = 1.0
_BREAK_AFTER_HEADING_COST = 2.0
_CHUNK_COST = 0.01
_MAX_REPLANS = 8


@dataclass(frozen=True)
class ChunkLimits:
    min_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Chunk:
    text: str
    token_count: int
    start: int = 0  # text == document[start:end]
    end: int = 0
    page_start: int | None = None
    page_end: int | None = None
    section: str | None = None


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int  # without the model's special tokens
    starts_paragraph: bool
    is_heading: bool


def chunk_text(text: str, counter: TokenCounter, limits: ChunkLimits) -> list[Chunk]:
    """Chunks of `text`, each at most `limits.max_tokens` tokens as the model reads them."""
    if not text.strip():
        return []
    max_tokens = limits.max_tokens
    for _ in range(_MAX_REPLANS):
        units = _units(text, counter, max_tokens)
        planned = _plan(units, counter.special_tokens, ChunkLimits(limits.min_tokens, max_tokens))
        spans = [_strip(text, start, end) for start, end in planned]
        texts = [text[start:end] for start, end in spans]
        counts = counter.count(texts)
        overshoot = max(count - limits.max_tokens for count in counts)
        if overshoot <= 0:
            return [
                Chunk(chunk, count, start, end) for chunk, count, (start, end) in zip(texts, counts, spans, strict=True)
            ]
        # Tokens merge differently across unit edges: plan again with the measured overshoot.
        max_tokens -= overshoot
    raise AssertionError(f"could not fit chunks under {limits.max_tokens} tokens")  # pragma: no cover


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without the whitespace at its ends (as str.strip)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _units(text: str, counter: TokenCounter, max_tokens: int) -> list[_Unit]:
    """Paragraph, sentence or token-window spans, each within `max_tokens`, covering the text."""
    room = max_tokens - counter.special_tokens
    units: list[_Unit] = []
    for start, end in _spans(text, _PARAGRAPH_END, 0, len(text)):
        pieces = [(start, end)]
        if _plain_tokens(counter, text[start:end]) > room:
            pieces = [
                window
                for sentence in _spans(text, _SENTENCE_END, start, end)
                for window in _windows(text, sentence, counter, max_tokens)
            ]
        counts = counter.count([text[a:b] for a, b in pieces])
        for index, ((a, b), count) in enumerate(zip(pieces, counts, strict=True)):
            units.append(_Unit(a, b, count - counter.special_tokens, index == 0, bool(_HEADING.match(text, a))))
    return units


def _spans(text: str, separator: re.Pattern, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of text[start:end] cut after each separator (the separator stays with its span)."""
    spans, cursor = [], start
    for match in separator.finditer(text, start, end):
        if match.end() > cursor and text[cursor : match.start()].strip():
            spans.append((cursor, match.end()))
            cursor = match.end()
    if text[cursor:end].strip():
        spans.append((cursor, end))
    elif spans:
        spans[-1] = (spans[-1][0], end)
    return spans


def _windows(text: str, span: tuple[int, int], counter: TokenCounter, max_tokens: int) -> list[tuple[int, int]]:
    """The span itself if it fits, else consecutive token windows of it."""
    start, end = span
    if _plain_tokens(counter, text[start:end]) <= max_tokens - counter.special_tokens:
        return [span]
    windows, cursor = [], start
    for piece in counter.split(text[start:end], max_tokens):
        offset = text.index(piece, cursor)
        windows.append((cursor, offset + len(piece)))
        cursor = offset + len(piece)
    windows[-1] = (windows[-1][0], end)
    return windows


def _plain_tokens(counter: TokenCounter, text: str) -> int:
    return counter.count([text])[0] - counter.special_tokens


def _plan(units: list[_Unit], special: int, limits: ChunkLimits) -> list[tuple[int, int]]:
    """Cheapest split of `units` into chunks (dynamic programme over chunk end positions)."""
    count = len(units)
    prefix = [0]
    for unit in units:
        prefix.append(prefix[-1] + unit.tokens)
    best = [0.0] + [float("inf")] * count
    previous = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(end - 1, -1, -1):
            size = prefix[end] - prefix[start] + special
            if size > limits.max_tokens and start < end - 1:
                break
            cost = best[start] + _chunk_cost(units, start, end, size, limits)
            if cost < best[end]:
                best[end], previous[end] = cost, start
    ends, end = [], count
    while end > 0:
        ends.append(end)
        end = previous[end]
    bounds = [0, *reversed(ends)]
    return [(units[a].start, units[b - 1].end) for a, b in itertools.pairwise(bounds)]


def _chunk_cost(units: list[_Unit], start: int, end: int, size: int, limits: ChunkLimits) -> float:
    cost = _CHUNK_COST
    if size < limits.min_tokens:
        cost += _SHORT_CHUNK_COST
    if end < len(units):
        if not units[end].starts_paragraph:
            cost += _BREAK_INSIDE_PARAGRAPH_COST
        if units[end - 1].is_heading:
            cost += _BREAK_AFTER_HEADING_COST
    return cost
