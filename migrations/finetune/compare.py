"""Before and after: the base model and the candidate measured the same way.

With an eval file (the one `migrate reindex --eval` reads), on the real index path: the corpus in
Postgres is embedded by each model into a scratch Milvus collection (the live index itself where
it already is that model at that dimension), and the labelled queries are searched and ranked by
document exactly as `producer eval --mode dense` does (it is the models that are compared).
Without one, on the held-out pairs: each held-out query against every held-out passage.
"""

import logging
import os
from itertools import count

import psycopg
from pymilvus import MilvusClient
from sentence_transformers import SentenceTransformer
from sentence_transformers.evaluation import InformationRetrievalEvaluator
from tqdm.auto import tqdm

from migrations.finetune.pairs import Pair
from producer.evaluate import EvalCase, evaluate
from producer.search import encoder_for
from workers.core.constants import DENSE
from workers.core.stores import catalog, milvus, progress
from workers.core.stores.catalog import IndexVersion

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "finetune_scratch"
EMBED_ROWS = 256
_scratch_numbers = count()


def on_index(
    conn: psycopg.Connection, client: MilvusClient, model: str, dim: int, cases: list[EvalCase], device: str
) -> dict:
    """MRR@10, Hit@1 and Hit@5 of `model` at `dim` over the whole indexed corpus."""
    live = catalog.live_version(conn)
    if live is not None and (live.model, live.dim, live.quantize) == (model, dim, "none"):
        return {**evaluate(conn, client, live, cases, device, DENSE), "corpus": "live index"}
    scratch = IndexVersion(-1, model, dim, f"{SCRATCH_PREFIX}_{os.getpid()}_{next(_scratch_numbers)}", "scratch")
    milvus.ensure_collection(client, scratch.collection, dim)
    try:
        _embed_corpus(conn, client, scratch, device)
        return {**evaluate(conn, client, scratch, cases, device, DENSE), "corpus": "scratch collection"}
    finally:
        client.drop_collection(scratch.collection)


def _embed_corpus(conn: psycopg.Connection, client: MilvusClient, scratch: IndexVersion, device: str) -> None:
    encoder = encoder_for(scratch.model, device)
    total = progress.row_counts(conn).get(("chunks", 0), 0)  # kept, not counted (schema 0011)
    query = "SELECT c.id, c.document_id, d.access_level, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
    bar = tqdm(total=total, desc="embedding", unit="chunk")
    # A server-side cursor (it lives in a transaction): the corpus is read EMBED_ROWS at a time.
    with bar, conn.transaction(), conn.cursor(name="finetune_corpus") as cursor:
        cursor.execute(query)
        while rows := cursor.fetchmany(EMBED_ROWS):
            vectors = encoder.encode_documents([text for _, _, _, text in rows], scratch.dim)
            milvus.upsert(
                client,
                scratch.collection,
                [
                    milvus.VectorRow(chunk_id, document_id, level, vector)
                    for (chunk_id, document_id, level, _), vector in zip(rows, vectors, strict=True)
                ],
            )
            bar.update(len(rows))


def on_pairs(model: SentenceTransformer, held_out: list[Pair], query_prompt: str, dim: int | None) -> dict:
    """MRR@10, Hit@1 and Hit@5 of each held-out query among all held-out passages."""
    passages = list(dict.fromkeys(pair.positive for pair in held_out))
    passage_ids = {passage: f"p{number}" for number, passage in enumerate(passages)}
    queries = list(dict.fromkeys(pair.query for pair in held_out))
    query_ids = {query: f"q{number}" for number, query in enumerate(queries)}
    relevant: dict[str, set[str]] = {}
    for pair in held_out:
        relevant.setdefault(query_ids[pair.query], set()).add(passage_ids[pair.positive])
    evaluator = InformationRetrievalEvaluator(
        queries={qid: query for query, qid in query_ids.items()},
        corpus={pid: passage for passage, pid in passage_ids.items()},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 5],
        precision_recall_at_k=[1],
        map_at_k=[10],
        name="held_out",
        write_csv=False,
        truncate_dim=dim,
        query_prompt=query_prompt or None,
        main_score_function="cosine",
    )
    scores = evaluator(model)
    return {
        "queries": len(queries),
        "passages": len(passages),
        "mrr": scores["held_out_cosine_mrr@10"],
        "hit_at_1": scores["held_out_cosine_accuracy@1"],
        "hit_at_5": scores["held_out_cosine_accuracy@5"],
        "corpus": "held-out pairs",
    }
