"""Split a document into chunks of `min_tokens`–`max_tokens` tokens of the model's tokenizer, and
at most `max_chars` characters.

Text is cut into units — paragraphs, or the sentences of a paragraph too long to keep whole,
or windows of a sentence too long to keep whole — and a dynamic programme picks where chunks
end: never over a limit, as few short chunks as possible, then as few breaks inside a paragraph
or right after a heading as possible. Chunks are spans of the original text.

Bounded whatever the input: the tokenizer never sees more than `max_chars` characters at once
(a paragraph longer than that is split into sentences, a sentence into windows at spaces, or at
the cap where there are none: 20 MB of letters without a space becomes chunks of `max_chars`,
not one), and a long document is planned in blocks of about BLOCK_CHARS characters that end at a
paragraph, so memory follows the block, and time the length of the text.
"""

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from workers.embedding.tokenizer import TokenCounter

_PARAGRAPH_END = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?…。])[\"'”’)\]]*\s+")
_SPACE = re.compile(r"\s+")
_HEADING = re.compile(r"#{1,6}\s")
# Costs of a chunk in the plan: short chunks are avoided first, awkward breaks next.
_SHORT_CHUNK_COST = 1000.0
_BREAK_INSIDE_PARAGRAPH_COST = 1.0
_BREAK_AFTER_HEADING_COST = 2.0
_CHUNK_COST = 0.01
_MAX_REPLANS = 8
# Text planned at once: a chunk boundary is forced at the paragraph where a block ends.
BLOCK_CHARS = 1_000_000
DEFAULT_MAX_CHARS = 8000


@dataclass(frozen=True)
class ChunkLimits:
    min_tokens: int
    max_tokens: int
    max_chars: int = DEFAULT_MAX_CHARS


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
    """Chunks of `text`, each at most `limits.max_tokens` tokens as the model reads them and at
    most `limits.max_chars` characters."""
    chunks: list[Chunk] = []
    for start, end in _blocks(text, max(BLOCK_CHARS, limits.max_chars)):
        chunks += _chunk_block(text, start, end, counter, limits)
    return chunks


def _blocks(text: str, size: int) -> Iterator[tuple[int, int]]:
    """Spans of about `size` characters covering `text`, each ending after the last paragraph
    break in its second half (else after a space, else at `size`)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            for boundary in (_PARAGRAPH_END, _SPACE):
                found = [match.end() for match in boundary.finditer(text, start + size // 2, end)]
                if found and found[-1] < end:
                    end = found[-1]
                    break
        yield start, end
        start = end


def _chunk_block(text: str, start: int, end: int, counter: TokenCounter, limits: ChunkLimits) -> list[Chunk]:
    if not text[start:end].strip():
        return []
    max_tokens = limits.max_tokens
    for _ in range(_MAX_REPLANS):
        current = ChunkLimits(limits.min_tokens, max_tokens, limits.max_chars)
        units = _units(text, start, end, counter, current)
        spans = [_strip(text, a, b) for a, b in _plan(units, counter.special_tokens, current)]
        texts = [text[a:b] for a, b in spans]
        counts = counter.count(texts)
        overshoot = max(count - limits.max_tokens for count in counts)
        if overshoot <= 0:
            return [Chunk(chunk, count, a, b) for chunk, count, (a, b) in zip(texts, counts, spans, strict=True)]
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


def _units(text: str, start: int, end: int, counter: TokenCounter, limits: ChunkLimits) -> list[_Unit]:
    """Paragraph, sentence or window spans of text[start:end], each within the limits, covering it."""
    room = limits.max_tokens - counter.special_tokens
    pieces = [
        (a, b, index == 0)
        for paragraph in _spans(text, _PARAGRAPH_END, start, end)
        for index, (a, b) in enumerate(_within_chars(text, paragraph, limits.max_chars))
    ]
    counts = counter.count([text[a:b] for a, b, _ in pieces])
    units: list[_Unit] = []
    for (a, b, first), count in zip(pieces, counts, strict=True):
        tokens = count - counter.special_tokens
        if tokens <= room:
            units.append(_Unit(a, b, tokens, first, bool(_HEADING.match(text, a))))
            continue
        sentences = _spans(text, _SENTENCE_END, a, b)
        # A piece that is one sentence is known to be too long: no need to count it again.
        known = {(a, b): tokens} if len(sentences) == 1 else {}
        windows = [w for sentence in sentences for w in _windows(text, sentence, counter, room, known.get(sentence))]
        for index, (x, y, window_tokens) in enumerate(windows):
            units.append(_Unit(x, y, window_tokens, first and index == 0, bool(_HEADING.match(text, x))))
    return units


def _within_chars(text: str, span: tuple[int, int], max_chars: int) -> list[tuple[int, int]]:
    """The span, or (too long in characters) its sentences, each cut at spaces (or, where there
    are none, at the cap) into pieces of at most `max_chars` characters."""
    start, end = span
    if end - start <= max_chars:
        return [span]
    return [piece for sentence in _spans(text, _SENTENCE_END, start, end) for piece in _cut(text, sentence, max_chars)]


def _cut(text: str, span: tuple[int, int], max_chars: int) -> list[tuple[int, int]]:
    """Consecutive pieces of at most `max_chars` characters covering the span, ending after a
    space where one lies in the second half of the piece."""
    start, end = span
    pieces = []
    while end - start > max_chars:
        limit = start + max_chars
        spaces = [match.end() for match in _SPACE.finditer(text, start + max_chars // 2, limit)]
        cut = spaces[-1] if spaces and spaces[-1] < limit else limit
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


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


def _windows(
    text: str, span: tuple[int, int], counter: TokenCounter, room: int, tokens: int | None = None
) -> list[tuple[int, int, int]]:
    """(start, end, tokens): the span itself if it fits in `room` tokens, else consecutive token
    windows of it. A span here is at most `max_chars` long: the tokenizer sees a bounded text.
    Window counts are those of the span's own tokenization; the plan's chunks are counted again."""
    start, end = span
    if tokens is None:
        tokens = counter.count([text[start:end]])[0] - counter.special_tokens
    if tokens <= room:
        return [(start, end, tokens)]
    windows = [(start + a, start + b, n) for a, b, n in counter.windows(text[start:end], room)]
    if not windows:
        return [(start, end, tokens)]
    windows[0] = (start, *windows[0][1:])  # the whitespace before the first token goes with it
    return windows


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
            chars = units[end - 1].end - units[start].start
            if (size > limits.max_tokens or chars > limits.max_chars) and start < end - 1:
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
