"""Blue-green re-index: build a new (green) index version beside the live (blue) one, verify it,
then point the alias `chunks` at it in one step; the blue one is kept for rollback.

Postgres holds every chunk's text, so green is embedded from Postgres by the same workers
(tasks carry the version; a worker loads each version's model on first use). When the model stays
and the dimension does not grow, green is derived from blue's vectors instead (Matryoshka
truncation where it shrinks), with the text from Postgres: that is how an index built before
keyword search gains it (`--same-model`).
"""

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import psycopg
from pymilvus import MilvusClient

from producer.index import target_dim
from workers.core import identifiers
from workers.core.constants import ANALYZER, LIVE_ALIAS, RATE_WINDOW_S, STATE_BUILDING, STATE_LIVE, STATE_RETIRED
from workers.core.errors import InvalidInput, ServiceUnavailable
from workers.core.stores import audit, catalog, milvus, progress
from workers.core.stores.catalog import IndexVersion
from workers.embedding import resolve_model
from workers.embedding.base import fit_dimension
from workers.embedding.tokenizer import load_token_counter

log = logging.getLogger(__name__)

# Used for the estimate until this deployment has measured its own rate (one GPU worker, Qwen3-0.6B).
ASSUMED_CHUNKS_PER_S = 400.0
# Milvus row: the vector, a 32-character key, two scalars, and index overhead of roughly a third.
ROW_OVERHEAD_BYTES = 64
INDEX_OVERHEAD = 1.33
# The text kept for keyword search, with its BM25 vector and identifiers: about twice its bytes.
TEXT_OVERHEAD = 2.0
DERIVE_ROWS = 1000
TEXT_ROWS = 2000


@dataclass
class ReindexPlan:
    model: str
    dim: int
    quantize: str
    analyzer: str | None  # keyword and hybrid search (the text kept in Milvus)
    chunks: int
    tokens: int
    chunks_over_model_limit: int
    model_max_tokens: int
    derive_from_version: int | None
    estimated_seconds: float
    estimate_basis: str
    storage_bytes: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(
    conn: psycopg.Connection, model: str | None, dim: int | None, quantize: str | None = "none"
) -> ReindexPlan:
    """What a re-index to `model` at `dim` (run `quantize`d) would embed, take and store; changes
    nothing. `model` None: the live index's model, dimension and quantisation (`--same-model`)."""
    blue = catalog.live_version(conn)
    if blue is None:
        raise InvalidInput("there is no live index to move: run `producer ingest PATH` first")
    if model is None:
        model, dim, quantize = blue.model, dim or blue.dim, quantize or blue.quantize
    quantize = quantize or "none"
    info = resolve_model(model)
    dim = target_dim(dim, info)
    if (blue.model, blue.dim, blue.quantize, blue.analyzer) == (model, dim, quantize, ANALYZER):
        raise InvalidInput(
            f"the live index already uses {model} at {dim} dims ({quantize}) with keyword search: nothing to re-index"
        )
    corpus = _measure_texts(conn, info)
    derive = blue.id if (blue.model, blue.quantize) == (model, quantize) and dim <= blue.dim else None
    rate, basis = measured_rate(conn)
    storage = (corpus.chunks * (dim * 4 + ROW_OVERHEAD_BYTES) + corpus.text_bytes * TEXT_OVERHEAD) * INDEX_OVERHEAD
    plan = ReindexPlan(
        model=model,
        dim=dim,
        quantize=quantize,
        analyzer=ANALYZER,
        chunks=corpus.chunks,
        tokens=corpus.tokens,
        chunks_over_model_limit=corpus.over_limit,
        model_max_tokens=info.max_seq_length,
        derive_from_version=derive,
        estimated_seconds=corpus.chunks / (rate * 20 if derive else rate),
        estimate_basis="derived from the live vectors (no model run; ~20× the embedding rate)" if derive else basis,
        storage_bytes=int(storage),
    )
    if plan.chunks_over_model_limit:
        plan.warnings.append(
            f"{plan.chunks_over_model_limit} chunks are longer than the {info.max_seq_length} tokens {model} reads: "
            "they would be truncated (re-ingest with the new model to re-chunk, or pass --force)"
        )
    return plan


@dataclass
class _Texts:
    chunks: int = 0
    tokens: int = 0
    over_limit: int = 0
    text_bytes: int = 0


def _measure_texts(conn: psycopg.Connection, info) -> _Texts:
    """Chunks, their tokens as `info`'s model counts them, those over its limit, and their bytes:
    read through a server-side cursor, TEXT_ROWS at a time (a million texts do not fit in memory)."""
    measured = _Texts()
    with conn.transaction(), conn.cursor(name="reindex_plan_texts") as cursor:
        cursor.itersize = TEXT_ROWS
        cursor.execute("SELECT text FROM chunks")
        while rows := cursor.fetchmany(TEXT_ROWS):
            texts = [text for (text,) in rows]
            counts = _token_counts(info, texts)
            measured.chunks += len(texts)
            measured.tokens += sum(counts)
            measured.over_limit += sum(1 for count in counts if count > info.max_seq_length)
            measured.text_bytes += sum(len(text.encode("utf-8")) for text in texts)
    return measured


def _token_counts(info, texts: list[str]) -> list[int]:
    if info.is_test_model:
        return [len(text.split()) + 1 for text in texts]
    return load_token_counter(info).count(texts)


def measured_rate(conn: psycopg.Connection) -> tuple[float, str]:
    """Chunks/s of the most recent build that embedded at least 100 chunks, else the assumption.
    From the kept counts and the ends of each version's (version, embedded_at) index: no scan."""
    counts = progress.row_counts(conn)
    built = [version_id for (state, version_id), count in counts.items() if state == "embedded" and count >= 100]
    row = conn.execute(
        """
        SELECT v.id, extract(epoch FROM last.at - first.at) FROM index_versions v
        CROSS JOIN LATERAL (SELECT embedded_at AS at FROM chunk_embeddings WHERE index_version_id = v.id
                            AND embedded_at IS NOT NULL ORDER BY embedded_at LIMIT 1) first
        CROSS JOIN LATERAL (SELECT embedded_at AS at FROM chunk_embeddings WHERE index_version_id = v.id
                            AND embedded_at IS NOT NULL ORDER BY embedded_at DESC LIMIT 1) last
        WHERE v.id = ANY(%s) ORDER BY last.at DESC LIMIT 1
        """,
        (built,),
    ).fetchone()
    if row is not None and row[1] and row[1] > 1:
        count, seconds = counts[("embedded", row[0])], float(row[1])
        return count / seconds, f"measured: {count} chunks at {count / seconds:.1f} chunks/s"
    return ASSUMED_CHUNKS_PER_S, f"assumed {ASSUMED_CHUNKS_PER_S:.0f} chunks/s (one GPU worker; nothing measured yet)"


def start_green(conn: psycopg.Connection, client: MilvusClient, plan: ReindexPlan) -> IndexVersion:
    """The building version for the plan's (model, dim, quantize): the one a killed run left, or a new one."""
    wanted = (plan.model, plan.dim, plan.quantize, plan.analyzer)
    for version in catalog.active_versions(conn):
        shape = (version.model, version.dim, version.quantize, version.analyzer)
        if version.state == STATE_BUILDING and shape == wanted:
            log.info("resuming %s", version.collection)
            break
    else:
        version = catalog.create_version(conn, plan.model, plan.dim, STATE_BUILDING, plan.quantize, plan.analyzer)
    milvus.ensure_collection(client, version.collection, version.dim, version.analyzer)
    fill_pending(conn, version)
    return version


def fill_pending(conn: psycopg.Connection, version: IndexVersion) -> int:
    """Queue for `version` every chunk it lacks (also those ingested while it was created)."""
    cursor = conn.execute(
        "INSERT INTO chunk_embeddings (index_version_id, chunk_id) SELECT %s, id FROM chunks ON CONFLICT DO NOTHING",
        (version.id,),
    )
    return cursor.rowcount


def derive_vectors(conn: psycopg.Connection, client: MilvusClient, blue: IndexVersion, green: IndexVersion) -> int:
    """Fill green from blue's vectors (truncated and renormalised to its dimension) and, for keyword
    search, the text from Postgres; returns the chunks marked."""
    milvus.ensure_loaded(client, blue.collection)
    fields = ["chunk_id", "document_id", "access_level", "vector"]
    iterator = client.query_iterator(blue.collection, batch_size=DERIVE_ROWS, output_fields=fields)
    marked = 0
    try:
        while batch := iterator.next():
            pending = progress.still_pending(conn, green.id, [row["chunk_id"] for row in batch])
            rows = [row for row in batch if row["chunk_id"] in pending]
            if not rows:
                continue
            vectors = np.array([row["vector"] for row in rows], dtype=np.float32)
            if green.dim < blue.dim:  # the same dimension keeps blue's vectors bit for bit
                vectors = fit_dimension(vectors, green.dim)
            texts = progress.chunk_texts(conn, [row["chunk_id"] for row in rows]) if green.analyzer else {}
            vector_rows = [
                _derived_row(row, vector, texts.get(row["chunk_id"]), bool(green.analyzer))
                for row, vector in zip(rows, vectors, strict=True)
            ]
            milvus.upsert(client, green.collection, vector_rows, bool(green.analyzer))
            ids = [row["chunk_id"] for row in rows]
            done = progress.mark_embedded(conn, green.id, ids)
            # A chunk removed by an ingest meanwhile: no vector of it may stay in green.
            orphans = [chunk_id for chunk_id in ids if chunk_id not in done]
            if orphans:
                milvus.delete(client, green.collection, orphans)
            marked += len(done)
    finally:
        iterator.close()
    return marked


def _derived_row(row: dict, vector: np.ndarray, text: progress.ChunkText | None, keyword: bool) -> milvus.VectorRow:
    """Blue's row in green's shape. A chunk deleted meanwhile has no text: its row is written
    without, and removed right after (it is not marked)."""
    chunk_id, document_id, level = row["chunk_id"], row["document_id"], row["access_level"]
    if not keyword:
        return milvus.VectorRow(chunk_id, document_id, level, vector)
    if text is None:
        return milvus.VectorRow(chunk_id, document_id, level, vector, "")
    tokens = identifiers.for_chunk(text.text, text.source_path, text.head)
    return milvus.VectorRow(chunk_id, document_id, level, vector, text.text, tokens)


@dataclass
class Verification:
    chunks: int
    embedded: int
    in_milvus: int
    failed: int
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def verify(conn: psycopg.Connection, client: MilvusClient, version: IndexVersion, sample: int = 200) -> Verification:
    """Every chunk embedded in Postgres and present in Milvus, vectors of the right size and unit norm."""
    chunks = progress.row_counts(conn).get(("chunks", 0), 0)  # kept, not counted (schema 0011)
    counts = progress.progress(conn, version.id)
    milvus.ensure_loaded(client, version.collection)
    result = Verification(chunks, counts.embedded, milvus.count(client, version.collection), counts.failed)
    if counts.embedded != chunks:
        result.problems.append(f"{counts.embedded} of {chunks} chunks embedded ({counts.failed} failed)")
    if result.in_milvus != counts.embedded:
        result.problems.append(f"Milvus holds {result.in_milvus} vectors, Postgres marks {counts.embedded}")
    rows = client.query(version.collection, filter="", output_fields=["vector"], limit=sample)
    vectors = np.array([row["vector"] for row in rows], dtype=np.float32).reshape(len(rows), -1)
    if len(rows) and vectors.shape[1] != version.dim:
        result.problems.append(f"vectors have {vectors.shape[1]} dimensions, expected {version.dim}")
    elif len(rows) and not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
        result.problems.append("vectors are not unit length")
    return result


def cutover(conn: psycopg.Connection, client: MilvusClient, version: IndexVersion, force: bool = False) -> bool:
    """Make `version` live, unless chunks arrived that it lacks (then False: embed them first).
    Refused (CutoverRefused, naming them) while any of its chunks is recorded as failed — they
    would be missing from the live index — unless `force`.

    Under the versions lock no ingest can commit meanwhile. The alias switches first (one atomic
    `alter_alias`, checked by reading a sentinel through it), then the states in Postgres: if the
    switch fails, Postgres still says what it said and the same command can run again.
    """
    milvus.ensure_loaded(client, version.collection)  # loaded before any search can reach it
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=True)
        counts = progress.progress(conn, version.id)
        if fill_pending(conn, version) or counts.pending:
            return False
        if counts.failed and not force:
            raise CutoverRefused(_failed_message(conn, version, counts.failed))
        milvus.point_live_alias(client, version.collection)
        _check_alias(client, version)
        conn.execute(
            "UPDATE index_versions SET state = %s WHERE state = %s AND id <> %s",
            (STATE_RETIRED, STATE_LIVE, version.id),
        )
        conn.execute(
            "UPDATE index_versions SET state = %s, activated_at = now(), canary_percent = NULL WHERE id = %s",
            (STATE_LIVE, version.id),
        )
    return True


class CutoverRefused(InvalidInput):
    """A version with failed chunks would serve an index that lacks them: they are named."""


def _failed_message(conn: psycopg.Connection, version: IndexVersion, failed: int) -> str:
    named = "; ".join(
        f"{path} (chunk {chunk_id[:12]}: {error.splitlines()[0][:120]})"
        for path, chunk_id, error in progress.failed_documents(conn, version.id)
    )
    return (
        f"{failed} chunks failed to embed for {version.collection} and would be missing from the live index: "
        f"{named}{' and more' if failed > 5 else ''}. `migrate retry` embeds them again; "
        "`--force` cuts over without them"
    )


def _check_alias(client: MilvusClient, version: IndexVersion) -> None:
    """Read a sentinel row through the alias and in the collection: old servers cached aliases."""
    if milvus.alias_target(client) != version.collection:
        raise ServiceUnavailable(f"the alias {LIVE_ALIAS!r} does not point at {version.collection} after the switch")
    rows = client.query(version.collection, filter="", output_fields=["chunk_id"], limit=1)
    if not rows:
        return
    sentinel = rows[0]["chunk_id"]
    through_alias = client.get(LIVE_ALIAS, ids=[sentinel], output_fields=["vector"])
    direct = client.get(version.collection, ids=[sentinel], output_fields=["vector"])
    if not through_alias or not np.allclose(through_alias[0]["vector"], direct[0]["vector"]):
        raise ServiceUnavailable(f"the alias {LIVE_ALIAS!r} still serves another collection than {version.collection}")


def rollback_target(conn: psycopg.Connection, client: MilvusClient) -> tuple[IndexVersion, IndexVersion]:
    """The live version and the most recent retired version still kept: (from, to) of a rollback."""
    live = catalog.live_version(conn)
    retired = [
        v for v in catalog.all_versions(conn) if v.state == STATE_RETIRED and client.has_collection(v.collection)
    ]
    if live is None or not retired:
        raise InvalidInput("there is no retired index version to roll back to (cleaned up, or never re-indexed)")
    return live, max(retired, key=lambda version: version.id)


def cleanup(conn: psycopg.Connection, client: MilvusClient, state: str = STATE_RETIRED) -> list[IndexVersion]:
    """Drop the collections of the versions in `state` (retired: no rollback to them after this;
    building: an abandoned re-index) and forget them, under the versions lock: no ingest writes
    chunks for a version while it goes, and no cutover picks one."""
    with conn.transaction():
        catalog.lock_versions(conn, exclusive=True)
        dropped = [version for version in catalog.all_versions(conn) if version.state == state]
        for version in dropped:
            conn.execute("DELETE FROM index_versions WHERE id = %s", (version.id,))
        for version in dropped:  # last: if a drop fails, the transaction (and the versions) stay
            if client.has_collection(version.collection):
                client.drop_collection(version.collection)
    return dropped


def version_status(conn: psycopg.Connection) -> list[dict]:
    """Every version with its state, progress, and for one being built the recent rate and ETA."""
    statuses = []
    current = catalog.canary(conn)
    searched = _search_figures(conn)
    useful = audit.useful_rates(conn)
    for version in catalog.all_versions(conn):
        counts = progress.progress(conn, version.id)
        rate = progress.recent_rate(conn, RATE_WINDOW_S, version.id)
        statuses.append(
            {
                "id": version.id,
                "name": version.collection,
                "model": version.model,
                "dim": version.dim,
                "quantize": version.quantize,
                "modes": list(version.modes),
                "state": version.state,
                "embedded": counts.embedded,
                "total": counts.total,
                "failed": counts.failed,
                "rate_chunks_per_s": rate,
                "eta_s": progress.eta_seconds(counts.pending, rate),
                "canary_percent": current[1] if current and current[0].id == version.id else None,
                "searches": searched.get(version.id),
                "feedback": _feedback(useful.get(version.collection)),
            }
        )
    return statuses


def _feedback(counts: tuple[int, int] | None) -> dict | None:
    """Hits given feedback, and the share marked relevant (the useful rate)."""
    if counts is None:
        return None
    relevant, marked = counts
    return {"marked": marked, "relevant": relevant, "useful_rate": relevant / marked}


def _search_figures(conn: psycopg.Connection) -> dict[int, dict]:
    """Per version, what the query service answered from it: searches, the share with no hit,
    hits per search and mean latency (all replicas together)."""
    rows = conn.execute("SELECT index_version_id, searches, empty, hits, seconds FROM version_search_stats")
    return {
        version_id: {
            "searches": searches,
            "empty_share": empty / searches if searches else None,
            "hits_per_search": hits / searches if searches else None,
            "mean_ms": 1000 * seconds / searches if searches else None,
        }
        for version_id, searches, empty, hits, seconds in rows
    }
