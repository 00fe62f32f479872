#!/usr/bin/env python3
"""One GPU report, one command: the Qwen3-0.6B shape through every path, measured in one run.

    bash ops/bench/gpu_report.sh [--model DIR] [--chunks 2048] [--out gpu-report.json]
    bash ops/bench/gpu_report.sh --smoke          # CPU, tiny stand-in, a few chunks (the test suite)

Builds the full-size Qwen3-Embedding-0.6B stand-in (real tokenizer, random weights) unless a model
directory is given, takes chunks of 500–1000 tokens cut by our chunker, and measures:

  st_fp32        sentence-transformers encode, fp32, batch 32
  st_bf16        sentence-transformers encode, bf16 (CUDA; fp32 on CPU)
  padded         our encoder, padded SDPA over length-sorted token-budget batches (bare loop)
  packed         our encoder, packed sequences through the attention kernel the probe chose
  worker         the worker pipeline end to end in this process: an embedded Postgres and a
                 Milvus Lite file (no Redis), tasks in, vectors stored and rows marked

with tokens/s and chunks/s each, MFU (0.97 GFLOP/token for this shape, against the device's bf16
dense peak), peak VRAM, worker/bare ratio, the attention path and why, the time from start to the
first forward, and batch invariance: the cosine between a chunk embedded alone and inside a full
packed batch (bf16 on GPU). Then the fine-tuning recipe of `migrate finetune` (bf16, in-batch
negatives, the cached loss from a batch of 64) on the English–Vietnamese pairs of
ops/bench/data: steps/s, pairs/s and peak VRAM (skipped without the `train` extra: datasets and
accelerate). Prints a table and writes the JSON to --out.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import log, make_chunks
from embed_throughput import synchronize, time_bare, time_st
from make_qwen3_model import build

from workers.embedding import load_encoder, resolve_model

FLOPS_PER_TOKEN = 0.97e9  # Qwen3-0.6B: 2 × non-embedding parameters + attention at ~750 tokens
# bf16 dense peak by device name (NVIDIA datasheets, SXM parts).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-report-") as scratch:
        model = args.model or str(build(Path(scratch) / "qwen3", "tiny" if args.smoke else "full"))
        report = measure(args, model, Path(scratch))
    report["total_seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory (default: build the full-size stand-in)")
    parser.add_argument("--chunks", type=int, help="chunks to embed (default 2048; 8 with --smoke)")
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--finetune-batch", type=int, help="pairs per training step (default 128; 8 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in on whatever device: checks the script")
    parser.add_argument("--out", default="gpu-report.json")
    args = parser.parse_args()
    args.chunks = args.chunks or (8 if args.smoke else 2048)
    args.finetune_batch = args.finetune_batch or (8 if args.smoke else 128)
    return args


def measure(args: argparse.Namespace, model: str, scratch: Path) -> dict:
    import torch

    info = resolve_model(model)
    texts = make_chunks(info, args.chunks)
    padded = load_encoder(model, "auto", "padded")
    tokens = sum(len(ids) for ids in padded.tokenize(texts))
    on_cuda = padded.device.startswith("cuda")
    report: dict = {
        "device": torch.cuda.get_device_name(0) if on_cuda else padded.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": model,
        "chunks": len(texts),
        "tokens": tokens,
    }
    log(f"{len(texts)} chunks, {tokens} tokens on {report['device']}")
    rates: dict[str, float] = {}
    rates["st_fp32"] = tokens / time_st(model, texts, "fp32", 32)
    rates["st_bf16"] = tokens / time_st(model, texts, "bf16" if on_cuda else "fp32", 32)
    rates["padded"], report["peak_vram_gib_padded"] = bare(padded, texts, tokens, args.batch_tokens)
    packed = load_encoder(model, "auto", "packed")
    report["attention"] = {"path": packed.attention.path, "reason": packed.attention.reason}
    report["attention"]["passed_over"] = packed.attention.passed_over
    rates["packed"], report["peak_vram_gib_packed"] = bare(packed, texts, tokens, args.batch_tokens)
    report["batch_invariance_cosine"] = batch_invariance(packed, texts)
    del padded
    worker = load_encoder(model, "auto", "auto")
    seconds, first_forward_s, stats = run_worker(worker, model, texts, scratch, args.batch_tokens)
    rates["worker"] = tokens / seconds
    report["worker_startup_to_first_forward_s"] = first_forward_s
    report["worker_attention_path"] = worker.attention.path
    report["stages"] = stats
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in report["device"]), None)
    for name, rate in rates.items():
        report[f"{name}_tokens_per_s"] = rate
        report[f"{name}_chunks_per_s"] = rate * len(texts) / tokens
        report[f"{name}_mfu"] = rate * FLOPS_PER_TOKEN / peak if peak and on_cuda else None
    bare_path = "packed" if worker.packs_sequences else "padded"
    report["worker_vs_bare"] = rates["worker"] / rates[bare_path]
    del worker, packed
    report["finetune"] = finetune(model, scratch, args.finetune_batch, 2 if args.smoke else None)
    return report


def finetune(model: str, scratch: Path, batch: int, steps: int | None) -> dict:
    """`migrate finetune`'s training on the device: one epoch of the public pairs (or `steps`)."""
    from importlib.util import find_spec

    missing = [name for name in ("datasets", "accelerate") if find_spec(name) is None]
    if missing:
        log(f"fine-tuning skipped: {', '.join(missing)} not installed (the train extra)")
        return {"skipped": f"{', '.join(missing)} not installed"}
    import torch

    from migrations.finetune import train
    from migrations.finetune.pairs import read_pairs

    pairs, _ = read_pairs([Path(__file__).resolve().parent / "data" / "iwslt15-en-vi-tst2013.tsv"])
    pairs = pairs[: steps * batch] if steps else pairs
    on_cuda = torch.cuda.is_available()
    info = resolve_model(model)
    options = train.TrainOptions(model, scratch / "finetuned", epochs=1, batch_size=batch, native_dim=info.dim)
    options.device = "cuda" if on_cuda else "cpu"
    sentence_model = train.load_model(model, options.device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train.train(sentence_model, pairs, options, info.query_prompt)
    synchronize()
    report = {
        "pairs": len(pairs),
        "batch_size": batch,
        "loss": result.loss,
        "steps": result.steps,
        "seconds": result.seconds,
        "steps_per_s": result.steps / result.seconds,
        "pairs_per_s": len(pairs) / result.seconds,
        "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None,
        "final_loss": result.losses[-1]["loss"] if result.losses else None,
    }
    log(f"fine-tuning: {report['steps_per_s']:.2f} steps/s, {report['pairs_per_s']:.1f} pairs/s")
    return report


def bare(encoder, texts: list[str], tokens: int, budget: int) -> tuple[float, float | None]:
    import torch

    if encoder.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = time_bare(encoder, texts, budget)
    peak = torch.cuda.max_memory_allocated() / 2**30 if encoder.device.startswith("cuda") else None
    return tokens / seconds, peak


def batch_invariance(encoder, texts: list[str]) -> float:
    """The lowest cosine between a chunk embedded alone and the same chunk inside one batch of all."""
    import numpy as np

    together = encoder.encode_documents(texts[:32])
    alone = np.stack([encoder.encode_documents([text])[0] for text in texts[:8]])
    return float(min((together[: len(alone)] * alone).sum(axis=1)))


def run_worker(encoder, model: str, texts: list[str], scratch: Path, budget: int) -> tuple[float, float, dict]:
    """The worker pipeline in this process against an embedded Postgres and a Milvus Lite file."""
    from common import drive, load_chunks, new_version

    from workers.core.sending import make_tasks
    from workers.core.settings import FleetSettings
    from workers.engine import EmbedEngine

    os.environ.pop("FLEET_DATABASE_URL", None)
    settings = FleetSettings(_env_file=None, data_dir=scratch / "fleet", model=model, batch_tokens=budget)
    chunk_ids = load_chunks(settings, texts, encoder.info)
    version = new_version(settings, model, encoder.info.dim, chunk_ids)
    engine = EmbedEngine(settings, encoder_loader=lambda *_: encoder).start()
    engine.preload(model)
    tasks = make_tasks(version.id, chunk_ids, settings.task_chunks)
    started = time.perf_counter()
    embedded = drive(engine, tasks, settings.worker_concurrency)
    synchronize()
    seconds = time.perf_counter() - started
    first_forward = engine.first_forward_at - started if engine.first_forward_at else float("nan")
    stats = engine.stats()
    engine.close()
    assert embedded == len(chunk_ids), f"the worker embedded {embedded} of {len(chunk_ids)} chunks"
    log(f"worker end to end: {seconds:.2f}s (first forward after {first_forward:.2f}s)")
    return seconds, first_forward, stats


def print_table(report: dict) -> None:
    print(f"{report['device']}, torch {report['torch']} (CUDA {report['cuda']}), {report['model']}")
    print(f"{report['chunks']} chunks, {report['tokens']} tokens; attention: {report['attention']['path']}")
    print(f"{'path':10s} {'tokens/s':>12s} {'chunks/s':>10s} {'MFU':>6s}")
    for name in ("st_fp32", "st_bf16", "padded", "packed", "worker"):
        mfu = report[f"{name}_mfu"]
        print(
            f"{name:10s} {report[f'{name}_tokens_per_s']:12,.0f} {report[f'{name}_chunks_per_s']:10,.1f} "
            f"{'-' if mfu is None else f'{mfu:.2f}':>6s}"
        )
    first = report["worker_startup_to_first_forward_s"]
    print(f"worker/bare {report['worker_vs_bare']:.2f}; first forward {first:.2f}s after the first task")
    print(f"batch invariance (min cosine alone vs in a batch): {report['batch_invariance_cosine']:.6f}")
    print(f"peak VRAM padded {report['peak_vram_gib_padded']} GiB, packed {report['peak_vram_gib_packed']} GiB")
    tuned = report["finetune"]
    if "skipped" in tuned:
        print(f"fine-tuning: skipped ({tuned['skipped']})")
    else:
        print(
            f"fine-tuning ({tuned['loss']}, batch {tuned['batch_size']}): {tuned['steps_per_s']:.2f} steps/s, "
            f"{tuned['pairs_per_s']:.1f} pairs/s, peak VRAM {tuned['peak_vram_gib']} GiB"
        )


if __name__ == "__main__":
    sys.exit(main())
