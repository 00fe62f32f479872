"""Retrieval quality of an index version on labelled queries: MRR@10, Hit@1 and Hit@5.

An eval file holds JSON lines `{"query", "level", "expected_document"}` (the document's path as
ingested). Hits are ranked by document: several chunks of one document count once, at its best.
A run's figures can be kept in Postgres (`--push-metrics`), where `producer serve-metrics` exports
the latest per version for the alert rules (ops/prometheus/alerts.yml).
"""

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from pymilvus import MilvusClient

from producer.search import encoder_for, resolve_mode, search
from workers.core.access import AccessLevel
from workers.core.constants import KEYWORD, STATE_BUILDING, STATE_LIVE
from workers.core.errors import InvalidInput
from workers.core.stores import milvus
from workers.core.stores.catalog import IndexVersion

RANK_CUTOFF = 10
CHUNKS_SEARCHED = 50


@dataclass(frozen=True)
class EvalCase:
    query: str
    level: AccessLevel
    expected_document: str


def load_cases(path: Path) -> list[EvalCase]:
    """The cases in `path`; a malformed line is an error naming its line number."""
    if not path.is_file():
        raise InvalidInput(f"eval file {path} does not exist")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            cases.append(EvalCase(record["query"], AccessLevel.parse(record["level"]), record["expected_document"]))
        except (json.JSONDecodeError, KeyError, TypeError, InvalidInput) as err:
            raise InvalidInput(
                f'{path}:{number}: expected {{"query", "level", "expected_document"}} ({err.__class__.__name__}: {err})'
            ) from err
    if not cases:
        raise InvalidInput(f"eval file {path} has no cases")
    return cases


def evaluate(
    conn: psycopg.Connection,
    client: MilvusClient,
    version: IndexVersion,
    cases: list[EvalCase],
    device: str,
    mode: str | None = None,
) -> dict:
    """MRR@10, Hit@1 and Hit@5 of `version` on `cases`, searched in `mode` (default: the version's)."""
    mode = resolve_mode(version, mode)
    milvus.ensure_loaded(client, version.collection)  # a fresh process finds it released
    encoder = None if mode == KEYWORD else encoder_for(version.model, device, version.quantize)
    ranks = []
    for case in cases:
        hits = search(conn, client, encoder, version, case.query, case.level, CHUNKS_SEARCHED, mode)
        documents = list(dict.fromkeys(hit.source_path for hit in hits))
        ranks.append(documents.index(case.expected_document) + 1 if case.expected_document in documents else None)
    count = len(cases)
    return {
        "index": version.collection,
        "model": version.model,
        "dim": version.dim,
        "mode": mode,
        "queries": count,
        "mrr": sum(1 / rank for rank in ranks if rank and rank <= RANK_CUTOFF) / count,
        "hit_at_1": sum(1 for rank in ranks if rank == 1) / count,
        "hit_at_5": sum(1 for rank in ranks if rank and rank <= 5) / count,
    }


def record_result(conn: psycopg.Connection, result: dict) -> None:
    """Keep a run's figures (`producer eval --push-metrics`) for `producer serve-metrics` to export."""
    conn.execute(
        "INSERT INTO eval_results (index_name, mode, queries, mrr, hit_at_5) VALUES (%s, %s, %s, %s, %s)",
        (result["index"], result["mode"], result["queries"], result["mrr"], result["hit_at_5"]),
    )


@dataclass(frozen=True)
class LatestResult:
    index_name: str
    mode: str
    mrr: float
    hit_at_5: float
    created_at: datetime


def latest_results(conn: psycopg.Connection) -> list[LatestResult]:
    """The last recorded run per index version still in use (live or being built) and mode: a
    retired version's figures would alert about an index nobody searches."""
    rows = conn.execute(
        "SELECT DISTINCT ON (e.index_name, e.mode) e.index_name, e.mode, e.mrr, e.hit_at_5, e.created_at"
        " FROM eval_results e JOIN index_versions v ON v.collection = e.index_name WHERE v.state IN (%s, %s)"
        " ORDER BY e.index_name, e.mode, e.created_at DESC",
        (STATE_LIVE, STATE_BUILDING),
    ).fetchall()
    return [LatestResult(*row) for row in rows]
