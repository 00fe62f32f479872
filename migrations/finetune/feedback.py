"""Training pairs from what the people who search said (`POST /v1/feedback`, `--from-feedback`).

A query's hits marked relevant are its positives; those marked not relevant, its hard negatives
(the index ranked them high, and a person said no: the best negatives there are). Verdicts are
gathered by query text over every search that asked it: a chunk more often marked relevant than
not is a positive, more often not a negative, a tie neither.

Fail closed on levels: a verdict trains only when both the search ran at or below `max_level`
(the query itself may speak of what its level reads) and the chunk's document is at or below
it. Searches logged without their text (FLEET_SEARCH_LOG=hashed) and chunks no longer indexed
cannot make a pair; each kind of skipped verdict is counted in the report.
"""

import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

from migrations.finetune.pairs import Pair, PairsReport
from workers.core.access import AccessLevel

SOURCE = "(search feedback)"


@dataclass
class _Verdicts:
    """One query's chunks with the votes on each: chunk id -> [relevant, not relevant]."""

    votes: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    texts: dict[str, tuple[str, int]] = field(default_factory=dict)  # chunk id -> (text, document id)


def feedback_pairs(conn: psycopg.Connection, max_level: AccessLevel) -> tuple[list[tuple[Pair, int]], PairsReport]:
    """(pair, the positive's document) per relevant hit, with a hard negative where the query has
    one, and the report of what was read and skipped."""
    report = PairsReport(SOURCE, "", "feedback")
    by_query: dict[str, _Verdicts] = defaultdict(_Verdicts)
    skipped: dict[str, int] = defaultdict(int)
    for query, search_level, relevant, chunk_id, text, document_id, chunk_level in _verdicts(conn):
        why = _unusable(query, search_level, text, chunk_level, max_level)
        if why:
            skipped[why] += 1
            continue
        verdicts = by_query[unicodedata.normalize("NFC", query).strip()]
        verdicts.votes[chunk_id][0 if relevant else 1] += 1
        verdicts.texts[chunk_id] = (unicodedata.normalize("NFC", text).strip(), document_id)
    for why, count in skipped.items():
        report.refused += count
        report.refusals.append(f"{count} verdicts skipped: {why}")
    made = []
    for query, verdicts in by_query.items():
        made += _pairs_of(query, verdicts)
    return made, report


def _verdicts(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT s.query, s.access_level, f.relevant, f.chunk_id, c.text, c.document_id, d.access_level"
        " FROM search_feedback f JOIN searches s ON s.id = f.search_id"
        " LEFT JOIN chunks c ON c.id = f.chunk_id LEFT JOIN documents d ON d.id = c.document_id"
        " ORDER BY f.created_at, f.search_id, f.chunk_id"
    ).fetchall()


def _unusable(
    query: str | None, search_level: int, text: str | None, chunk_level: int | None, max_level: AccessLevel
) -> str | None:
    if search_level > max_level:
        return f"a search run above --max-level {max_level.name}"
    if text is None or chunk_level is None:
        return "the chunk is no longer indexed"
    if chunk_level > max_level:
        return f"a chunk above --max-level {max_level.name}"
    if query is None:
        return "the search was logged without its text (FLEET_SEARCH_LOG=hashed)"
    return None


def _pairs_of(query: str, verdicts: _Verdicts) -> list[tuple[Pair, int]]:
    positives = [chunk for chunk, (yes, no) in verdicts.votes.items() if yes > no]
    negatives = [verdicts.texts[chunk][0] for chunk, (yes, no) in verdicts.votes.items() if no > yes]
    made = []
    for number, chunk in enumerate(positives):
        text, document_id = verdicts.texts[chunk]
        negative = negatives[number % len(negatives)] if negatives else None  # each negative in turn
        made.append((Pair(query, text, negative), document_id))
    return made
