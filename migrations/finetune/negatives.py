"""Hard negatives mined from the index with the base model, where the pairs bring none.

sentence-transformers' `mine_hard_negatives` finds, for each query, the passages the base model
ranks highest that are not its positive; of those we take the first that comes from none of the
documents holding the positive (another chunk of the same document may well answer the query:
trained as a negative, it would teach the model the opposite of the truth).
"""

import logging

from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

from migrations.finetune.corpus import CorpusChunk, documents_holding
from migrations.finetune.pairs import Pair

log = logging.getLogger(__name__)

# Candidates looked at per query: enough that one outside the positive's documents is left.
CANDIDATES = 8
# A candidate scored within 5 % of the positive is likely a second right answer, not a negative.
RELATIVE_MARGIN = 0.05


def mine(
    model: SentenceTransformer,
    pairs: list[Pair],
    chunks: list[CorpusChunk],
    query_prompt: str,
    sources: list[int | None] | None = None,
) -> list[Pair]:
    """`pairs` with a mined negative where one was found (and kept as they are where not).
    `sources`: each pair's own document where it is known (pairs made from the corpus)."""
    from datasets import Dataset

    if not chunks:
        return pairs
    asking = [pair for pair in pairs if pair.negative is None]
    dataset = Dataset.from_dict({"query": [p.query for p in asking], "positive": [p.positive for p in asking]})
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=[chunk.text for chunk in chunks],
        num_negatives=CANDIDATES,
        relative_margin=RELATIVE_MARGIN,
        output_format="n-tuple",
        query_prompt=query_prompt or None,
        verbose=False,
    )
    candidates = {
        (row["query"], row["positive"]): [row[f"negative_{n}"] for n in range(1, CANDIDATES + 1)] for row in mined
    }
    documents_of_text: dict[str, set[int]] = {}
    for chunk in chunks:
        documents_of_text.setdefault(chunk.text, set()).add(chunk.document_id)
    own = dict(zip(asking, documents_holding(chunks, [pair.positive for pair in asking]), strict=True))
    source_of = dict(zip(pairs, sources or [None] * len(pairs), strict=True))
    result = []
    for pair in pairs:
        if pair.negative is None:
            excluded = own[pair] | ({source_of[pair]} if source_of[pair] is not None else set())
            found = candidates.get((pair.query, pair.positive), [])
            negative = next((text for text in found if not documents_of_text.get(text, set()) & excluded), None)
            pair = Pair(pair.query, pair.positive, negative)
        result.append(pair)
    found = sum(1 for pair in result if pair.negative is not None)
    log.info("hard negatives: %d of %d pairs have one", found, len(result))
    return result
