"""What `migrate finetune` takes from the index: weak pairs when a company has none
(`--from-corpus`), and the passages hard negatives are mined from.

Only chunks at or below `max_level` are read: a model trained on a text serves every level, and
its weights could give back what it was trained on to anyone who can query it.
"""

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import PurePosixPath

import psycopg

from migrations.finetune.pairs import Pair
from workers.core.access import AccessLevel

# A weak pair's passage must say something: a sentence of fewer words is no query, and a rest
# of fewer characters is no passage.
MIN_QUERY_WORDS = 4
MIN_PASSAGE_CHARS = 200
_SENTENCE = re.compile(r"[^.!?\n]{20,300}[.!?]")


@dataclass(frozen=True)
class CorpusChunk:
    chunk_id: str
    document_id: int
    source_path: str
    level: AccessLevel
    title: str
    section: str | None
    text: str


def read_chunks(conn: psycopg.Connection, max_level: AccessLevel) -> list[CorpusChunk]:
    """Every chunk of a document at or below `max_level`, in document order."""
    rows = conn.execute(
        "SELECT c.id, c.document_id, d.source_path, d.access_level, d.metadata->>'title', c.section, c.text"
        " FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.access_level <= %s"
        " ORDER BY d.source_path, c.ordinal",
        (int(max_level),),
    ).fetchall()
    return [
        CorpusChunk(chunk_id, document_id, path, AccessLevel(level), title or _title_of(path), section, text)
        for chunk_id, document_id, path, level, title, section, text in rows
    ]


def _title_of(source_path: str) -> str:
    """A document's title when it has none: its file name in words (`annual-leave_policy` → `annual leave policy`)."""
    return re.sub(r"[-_]+", " ", PurePosixPath(source_path).stem).strip()


def corpus_pairs(chunks: list[CorpusChunk]) -> list[tuple[Pair, int]]:
    """Weak (query, passage) pairs, each with the document it comes from:
    the heading path (or, for a document's first chunk without one, its title) → the chunk;
    one sentence of a chunk → the rest of that chunk."""
    made: list[tuple[Pair, int]] = []
    first_of_document: set[int] = set()
    for chunk in chunks:
        text = unicodedata.normalize("NFC", chunk.text).strip()
        heading = chunk.section or (chunk.title if chunk.document_id not in first_of_document else None)
        first_of_document.add(chunk.document_id)
        if heading and len(heading.split()) >= 2 and len(text) >= MIN_PASSAGE_CHARS:
            query = unicodedata.normalize("NFC", heading.replace(" > ", ", "))  # a path reads as words
            made.append((Pair(query, text), chunk.document_id))
        sentence = _middle_sentence(text)
        if sentence:
            rest = (text[: sentence.start()] + text[sentence.end() :]).strip()
            if len(rest) >= MIN_PASSAGE_CHARS:
                made.append((Pair(sentence.group().strip(), rest), chunk.document_id))
    return made


def _middle_sentence(text: str) -> re.Match | None:
    """A sentence of the chunk to ask with: the one nearest its middle, of a question's length."""
    sentences = [m for m in _SENTENCE.finditer(text) if len(m.group().split()) >= MIN_QUERY_WORDS]
    if not sentences:
        return None
    middle = len(text) / 2
    return min(sentences, key=lambda m: abs((m.start() + m.end()) / 2 - middle))


def documents_holding(chunks: list[CorpusChunk], passages: list[str]) -> list[set[int]]:
    """For each passage, the documents one of whose chunks holds it or is held by it: a hard
    negative must never come from there (it may say the same thing)."""
    joined = "\x00".join(chunk.text for chunk in chunks)
    starts, offset = [], 0
    for chunk in chunks:
        starts.append(offset)
        offset += len(chunk.text) + 1
    found = []
    for passage in passages:
        documents = set()
        at = joined.find(passage)
        while at != -1:
            documents.add(chunks[_index_at(starts, at)].document_id)
            at = joined.find(passage, at + 1)
        documents.update(
            chunk.document_id for chunk in chunks if len(chunk.text) <= len(passage) and chunk.text in passage
        )
        found.append(documents)
    return found


def _index_at(starts: list[int], offset: int) -> int:
    return bisect_right(starts, offset) - 1
