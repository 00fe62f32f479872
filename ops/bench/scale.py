#!/usr/bin/env python3
"""What the corpus-wide operations cost as the corpus grows: 10 K, 100 K and 1 M chunks, one run.

For each size, a corpus of documents (1 to 30 chunks each, most of them a few; Markdown, text
and HTML in department/year/team folders, each department's `.fleet.yaml` giving its level) is
written to a scratch folder and run through the real commands, with the `null` model (the
forward costs nothing: what is left is ours), a scratch database on this machine's Postgres, a
Milvus Lite server and Redis:

- `producer ingest` (in process: parse, chunk, register, embed, upsert): chunks/s, and the peak
  RSS of the producer process (VmHWM; its parse processes are apart and bounded by
  FLEET_PARSE_MEMORY_MB);
- the same ingest again, nothing changed (fingerprints only);
- `producer status`; one reconciler round (the query `status` and the workers run, with the broker
  set); `migrate verify`; `migrate reindex --dry-run`;
- a backfill: `migrate reindex` to another dimension, its chunks/s over BACKFILL_S seconds, then
  stopped (the build is resumable);
- search p50 through `producer serve` (dense and hybrid, 1-word to 8-word queries);
- the sizes of Postgres (tables with their indexes) and of Milvus's data folder;
- EXPLAIN ANALYZE of the corpus-wide queries: the slowest one's plan is printed.

It prints a table and, with --json, one JSON document with the growth factor of each figure from
each size to the next (per chunk where the figure is a time). Targets (see README "Capacity"):
ingest seconds per chunk at the largest within 1.3x of the smallest; producer peak RSS under
1.5 GB; the unchanged re-ingest at least 10x faster than the first; status and a reconciler round
under 1 s; search p50 within 2x.

Chunks are 60 to 120 words (FLEET_CHUNK_MIN/MAX_TOKENS, the `null` model counts words) instead
of 500-1000 tokens, so that the 1 M corpus fits this machine's disk and an hour: what grows with
the corpus is the count of chunks, not their length (bytes per chunk are reported, and README's
capacity page scales them to real chunks).

  python ops/bench/scale.py                          # 10 K, 100 K, 1 M chunks
  python ops/bench/scale.py --chunks 10000 100000 --json
  python ops/bench/scale.py --embedded --chunks 10000 1000000   # the embedded default, no servers

With --embedded, each size runs as `producer ingest` does with no setting (an embedded Postgres and
a Milvus Lite file under the data dir, tasks in process): ingest, the unchanged re-ingest, status,
search p50 and the sizes only.
"""

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from common import DEFAULT_PG, REPO, log, milvus_server, scratch_database
from serve import wait_ready

from producer import keys
from tests.corpus import WORDS, write_corpus
from tests.query_plans import corpus_queries, plan, sequential, text_plan
from workers.core.access import AccessLevel
from workers.core.broker import broker_app
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, postgres
from workers.reconciler import Reconciler

DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
BACKFILL_S = 60.0
SEARCHES = 60
SEARCH_BUDGET_S = 120.0  # per mode; past it, the median of at least MIN_SEARCHES
MIN_SEARCHES = 15


def main() -> int:
    args = parse_args()
    results = []
    for chunks in args.chunks:
        results.append(measure_embedded(chunks, args) if args.embedded else measure(chunks, args))
        log(json.dumps(results[-1]))
    report = {"sizes": results, "growth": growth(results), "targets": targets(results)}
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024, help="vector size of the null model")
    parser.add_argument("--postgres", default=DEFAULT_PG, help="admin URL: a scratch database is made per size")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="broker the reconciler round reads (flushed)")
    parser.add_argument("--backfill-s", type=float, default=BACKFILL_S)
    parser.add_argument("--keep", type=Path, help="write each corpus under this folder and keep it")
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="the embedded default (no servers): ingest, re-ingest, status, search and sizes only",
    )
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


# --- one size -----------------------------------------------------------------------------------


def measure(target: int, args: argparse.Namespace) -> dict:
    result: dict = {"target_chunks": target}
    corpus_parent = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    corpus = corpus_parent / f"corpus-{target}"
    started = time.monotonic()
    result |= write_corpus(corpus, target)
    log(f"{target:,} chunks: {result['files']:,} files written in {time.monotonic() - started:.0f} s")
    milvus_dir = Path(tempfile.mkdtemp(prefix="bench-scale-milvus-"))
    try:
        with scratch_database(args.postgres) as database_url, milvus_server(milvus_dir) as milvus_uri:
            env = fleet_env(database_url, milvus_uri, args.dim, corpus_parent)
            settings = FleetSettings(
                _env_file=None,
                database_url=database_url,
                milvus_uri=milvus_uri,
                model=f"null:{args.dim}",
                broker_url=args.redis,
                data_dir=corpus_parent,
            )
            with closing(postgres.connect(settings, migrate=True)):
                pass
            result |= ingest_twice(corpus, env, settings)
            with closing(postgres.connect(settings)) as conn:
                (result["chunks"],) = conn.execute("SELECT count(*) FROM chunks").fetchone()
                result["postgres_settings"] = postgres_settings(conn)
                conn.execute("VACUUM ANALYZE")  # what autovacuum does by itself on a corpus left alone
            result["ingest_s_per_chunk"] = result["ingest_s"] / result["chunks"]
            result["register_s_per_chunk"] = result.pop("register_s") / result["chunks"]
            result["embed_s_per_chunk"] = result.pop("embed_s") / result["chunks"]
            result["status_s"] = median_of(3, lambda: command(env, "producer", "status", "--json")[0])
            result["status_with_broker_s"] = median_of(
                3, lambda: command({**env, "FLEET_BROKER_URL": args.redis}, "producer", "status", "--json")[0]
            )
            result["reconciler_round_s"] = reconciler_round(settings, args.redis)
            result["verify_s"], result["verify_rss_mb"] = command(env, "migrations", "verify", "--json")
            result["dry_run_s"], result["dry_run_rss_mb"] = command(
                env, "migrations", "reindex", "--dry-run", "--model", f"null:{args.dim // 2}", "--json"
            )
            result |= search_p50(settings, env)
            result["backfill_chunks_per_s"] = backfill_rate(settings, env, args)
            result |= sizes(settings, milvus_dir)
            result["plans"] = explain_all(settings)
    finally:
        shutil.rmtree(milvus_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(corpus_parent, ignore_errors=True)
    return result


def measure_embedded(target: int, args: argparse.Namespace) -> dict:
    """The embedded default (Postgres and a Milvus Lite file under the data dir, tasks in process,
    what `producer ingest` does with no setting): ingest, an unchanged re-ingest, `status`, search
    p50 and the sizes. The reconciler, the backfill and the plans need the services: see `measure`."""
    result: dict = {"target_chunks": target}
    parent = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    corpus, data_dir = parent / f"corpus-{target}", parent / f"fleet-{target}"
    started = time.monotonic()
    result |= write_corpus(corpus, target)
    log(f"{target:,} chunks: {result['files']:,} files written in {time.monotonic() - started:.0f} s")
    try:
        env = fleet_env(None, None, args.dim, data_dir)
        settings = FleetSettings(_env_file=None, model=f"null:{args.dim}", data_dir=data_dir)
        result |= ingest_twice(corpus, env, settings)
        with closing(postgres.connect(settings)) as conn:
            (result["chunks"],) = conn.execute("SELECT count(*) FROM chunks").fetchone()
            result["postgres_settings"] = postgres_settings(conn)
        result["ingest_s_per_chunk"] = result["ingest_s"] / result["chunks"]
        result["register_s_per_chunk"] = result.pop("register_s") / result["chunks"]
        result["embed_s_per_chunk"] = result.pop("embed_s") / result["chunks"]
        result["status_s"] = median_of(3, lambda: command(env, "producer", "status", "--json")[0])
        log(f"  status {result['status_s']:.2f} s")
        result |= search_p50(settings, env)
        dense, hybrid = result["search_dense_p50_ms"], result["search_hybrid_p50_ms"]
        log(f"  search p50 dense {dense:.0f} ms, hybrid {hybrid:.0f} ms")
        result |= sizes(settings, settings.embedded_milvus_path)
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)
    return result


def fleet_env(database_url: str | None, milvus_uri: str | None, dim: int, data_dir: Path) -> dict[str, str]:
    """The commands' environment: this one's, less any FLEET_ setting, plus the bench's (no URL:
    the embedded Postgres and Milvus Lite file under `data_dir`)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEET_")}
    services = {"FLEET_DATABASE_URL": database_url, "FLEET_MILVUS_URI": milvus_uri}
    return (
        env
        | {key: value for key, value in services.items() if value}
        | {
            "FLEET_MODEL": f"null:{dim}",
            "FLEET_CHUNK_MIN_TOKENS": "60",
            "FLEET_CHUNK_MAX_TOKENS": "120",
            "FLEET_DATA_DIR": str(data_dir),
            "FLEET_DEVICE": "cpu",
            "FLEET_METRICS_PORT": "0",
        }
    )


def ingest_twice(corpus: Path, env: dict[str, str], settings: FleetSettings) -> dict:
    seconds, rss = command(env, "producer", "ingest", str(corpus), "--json")
    phases = ingest_phases(settings)
    log(
        f"  ingest {seconds:.1f} s (registration {phases['register_s']:.1f} s, embedding {phases['embed_s']:.1f} s),"
        f" peak RSS {rss:.0f} MB"
    )
    again, again_rss = command(env, "producer", "ingest", str(corpus), "--json")
    log(f"  unchanged re-ingest {again:.1f} s")
    return phases | {
        "ingest_s": seconds,
        "ingest_rss_mb": rss,
        "reingest_s": again,
        "reingest_rss_mb": again_rss,
        "reingest_speedup": seconds / again,
    }


def ingest_phases(settings: FleetSettings) -> dict:
    """The two halves of an in-process ingest, from the rows' timestamps: registration (walk, parse,
    chunk, register: first document stored to last) and embedding (first chunk embedded to last;
    the in-process engine starts once every document is registered)."""
    with closing(postgres.connect(settings)) as conn:
        register_s, embed_s = conn.execute(
            "SELECT extract(epoch FROM (SELECT max(updated_at) - min(created_at) FROM documents)),"
            " extract(epoch FROM (SELECT max(embedded_at) - min(embedded_at) FROM chunk_embeddings))"
        ).fetchone()
    return {"register_s": float(register_s), "embed_s": float(embed_s)}


def postgres_settings(conn) -> dict[str, str]:
    """The server settings that decide write-heavy work at this scale (reported with the figures)."""
    names = ["shared_buffers", "max_wal_size", "wal_compression", "synchronous_commit", "checkpoint_timeout"]
    query = "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)"
    return dict(conn.execute(query, (names,)).fetchall())


def command(env: dict[str, str], program: str, *argv: str) -> tuple[float, float]:
    """Run `program argv` (python -m); returns its seconds and its peak RSS in MB. Fails loudly."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", program, *argv],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = PeakRss(process.pid)
    _, err = process.communicate()
    seconds = time.monotonic() - started
    peak.stop()
    if process.returncode != 0:  # 3 included: ingest refused a file, and none should be
        raise RuntimeError(f"{program} {' '.join(argv)} exited {process.returncode}: {err[-2000:]}")
    return seconds, peak.mb


class PeakRss:
    """The high-water mark of a process's resident memory (VmHWM), read until it exits."""

    def __init__(self, pid: int):
        self.pid = pid
        self.mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.mb = max(self.mb, int(line.split()[1]) / 1024)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def median_of(times: int, run) -> float:
    return statistics.median(run() for _ in range(times))


def reconciler_round(settings: FleetSettings, redis_url: str) -> float:
    """One round of the reconciler as a worker runs it (leader lock, outbox, lost work, pruning)."""
    reconciler = Reconciler(settings, broker_app(settings))
    try:
        reconciler.run_once()  # the first round also opens its connections
        rounds = []
        for _ in range(3):
            started = time.monotonic()
            reconciler.run_once()
            rounds.append(time.monotonic() - started)
        return statistics.median(rounds)
    finally:
        reconciler.stop()


def search_p50(settings: FleetSettings, env: dict[str, str]) -> dict:
    """p50 of searches through `producer serve`, dense and hybrid, one at a time."""
    with closing(postgres.connect(settings)) as conn:
        key = keys.create(conn, "scale", AccessLevel.director_only)
    port = free_port()
    log_file = Path(tempfile.mkstemp(prefix="bench-scale-serve-", suffix=".log")[1])
    service = subprocess.Popen(
        [sys.executable, "-m", "producer", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log_file.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(11)
    try:
        wait_ready(url, service, timeout=600)
        result = {}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            for mode in ("dense", "hybrid"):
                latencies, budget_ends = [], time.monotonic() + SEARCH_BUDGET_S
                for number in range(SEARCHES + 5):
                    if len(latencies) >= MIN_SEARCHES and time.monotonic() > budget_ends:
                        break  # a slow index: enough for a median
                    query = " ".join(rng.choices(WORDS, k=1 + number % 8)) + f" {number}"
                    started = time.monotonic()
                    response = client.post("/v1/search", json={"query": query, "top_k": 10, "mode": mode})
                    response.raise_for_status()
                    if number >= 5:  # the first ones load the collection and warm the caches
                        latencies.append(time.monotonic() - started)
                result[f"search_{mode}_p50_ms"] = statistics.median(latencies) * 1000
        return result
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
        log_file.unlink(missing_ok=True)


def free_port() -> int:
    from common import free_port as port

    return port()


def backfill_rate(settings: FleetSettings, env: dict[str, str], args: argparse.Namespace) -> float:
    """Chunks/s of `migrate reindex` to another dimension (a model run per chunk) over a window."""
    process = subprocess.Popen(
        [sys.executable, "-m", "migrations", "reindex", "--model", f"null:{args.dim // 2}", "--no-cutover"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with closing(postgres.connect(settings)) as conn:
            green = wait_for_green(conn, process)
            start_count, started = embedded(conn, green), time.monotonic()
            deadline = started + args.backfill_s
            while time.monotonic() < deadline and process.poll() is None:
                time.sleep(1)
            return (embedded(conn, green) - start_count) / (time.monotonic() - started)
    finally:
        if process.poll() is None:
            # SIGTERM unwinds a command as Ctrl-C does; SIGINT would be ignored where this bench runs
            # in the background of a shell (its children inherit SIGINT ignored).
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def wait_for_green(conn, process: subprocess.Popen) -> int:
    """The building version once its chunks are queued and its first ones embedded."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"migrate reindex exited {process.returncode} before building")
        building = [v for v in catalog.active_versions(conn) if v.state == "building"]
        if building and embedded(conn, building[0].id) > 0:
            return building[0].id
        time.sleep(0.5)
    raise RuntimeError("migrate reindex built nothing in 30 minutes")


def embedded(conn, version_id: int) -> int:
    (count,) = conn.execute(
        "SELECT count(*) FROM chunk_embeddings WHERE index_version_id = %s AND embedded_at IS NOT NULL",
        (version_id,),
    ).fetchone()
    return count


def sizes(settings: FleetSettings, milvus_dir: Path) -> dict:
    with closing(postgres.connect(settings)) as conn:
        rows = conn.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class"
            " WHERE relname IN ('documents', 'chunks', 'chunk_embeddings') ORDER BY relname"
        ).fetchall()
        (database,) = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    milvus_bytes = sum(path.stat().st_size for path in milvus_dir.rglob("*") if path.is_file())
    return {
        "postgres_mb": database / 2**20,
        "postgres_tables_mb": {name: size / 2**20 for name, size in rows},
        "milvus_mb": milvus_bytes / 2**20,
    }


def explain_all(settings: FleetSettings) -> dict:
    """Per corpus-wide operation, its slowest statement: milliseconds (EXPLAIN ANALYZE, rolled
    back), the tables it reads whole, and its plan."""
    explained = {}
    with closing(postgres.connect(settings)) as conn:
        for name, statements in corpus_queries(conn, settings).items():
            timed = [(plan(conn, query, params, analyze=True), query, params) for query, params in statements]
            if not timed:
                continue
            slowest, query, params = max(timed, key=lambda item: item[0]["Execution Time"])
            explained[name] = {
                "ms": slowest["Execution Time"],
                "sequential_scans": sequential(slowest),
                "plan": text_plan(conn, query, params),
            }
    return explained


# --- the report ---------------------------------------------------------------------------------

FIGURES = (
    ("ingest_s_per_chunk", "ingest s/chunk", 1e3, "ms"),
    ("register_s_per_chunk", "  registration", 1e3, "ms"),
    ("embed_s_per_chunk", "  embedding", 1e3, "ms"),
    ("ingest_rss_mb", "ingest peak RSS", 1, "MB"),
    ("reingest_speedup", "re-ingest speed-up", 1, "x"),
    ("status_s", "status", 1, "s"),
    ("status_with_broker_s", "status (broker)", 1, "s"),
    ("reconciler_round_s", "reconciler round", 1, "s"),
    ("verify_s", "migrate verify", 1, "s"),
    ("verify_rss_mb", "verify peak RSS", 1, "MB"),
    ("dry_run_s", "reindex --dry-run", 1, "s"),
    ("backfill_chunks_per_s", "backfill", 1, "chunks/s"),
    ("search_dense_p50_ms", "search dense p50", 1, "ms"),
    ("search_hybrid_p50_ms", "search hybrid p50", 1, "ms"),
    ("postgres_mb", "Postgres", 1, "MB"),
    ("milvus_mb", "Milvus", 1, "MB"),
)


def growth(results: list[dict]) -> dict:
    """Each figure's factor from each size to the next, and from the smallest to the largest."""
    factors: dict = {}
    pairs = list(itertools.pairwise(results))
    if len(results) > 2:
        pairs.append((results[0], results[-1]))
    for small, large in pairs:
        name = f"{small['chunks']}->{large['chunks']}"
        factors[name] = {key: large[key] / small[key] for key, *_ in FIGURES if small.get(key) and key in large}
        factors[name]["chunks"] = large["chunks"] / small["chunks"]
    return factors


def targets(results: list[dict]) -> dict:
    """Each target met or not, where its figures were taken (the embedded mode takes fewer)."""
    small, large = results[0], results[-1]
    checks = {
        "ingest_per_chunk_within_1.3x": lambda: large["ingest_s_per_chunk"] / small["ingest_s_per_chunk"] <= 1.3,
        "peak_rss_under_1.5GB": lambda: large["ingest_rss_mb"] < 1536,
        "reingest_10x_faster": lambda: large["reingest_speedup"] >= 10,
        "status_under_1s": lambda: large.get("status_with_broker_s", large["status_s"]) < 1,
        "reconciler_under_1s": lambda: large["reconciler_round_s"] < 1,
        "search_p50_within_2x": lambda: large["search_dense_p50_ms"] / small["search_dense_p50_ms"] <= 2,
    }
    met = {}
    for name, check in checks.items():
        try:
            met[name] = check()
        except KeyError:  # not measured in this mode
            continue
    if large.get("plans"):
        slowest = max(large["plans"].items(), key=lambda item: item[1]["ms"])
        met["slowest_query"] = {"name": slowest[0], **slowest[1]}
    return met


def table(report: dict) -> str:
    results = report["sizes"]
    lines = [f"{'':22s}" + "".join(f"{r['chunks']:>14,}" for r in results) + "   growth (first->last)"]
    last = list(report["growth"].values())[-1] if report["growth"] else {}
    for key, label, scale, unit in FIGURES:
        cells = "".join(f"{r.get(key, float('nan')) * scale:>14,.3f}" for r in results)
        lines.append(f"{label + ' (' + unit + ')':22s}{cells}   {last.get(key, float('nan')):.2f}x")
    lines.append("")
    lines.append(f"Postgres settings: {results[-1].get('postgres_settings')}")
    lines += [f"{name}: {passed}" for name, passed in report["targets"].items() if name != "slowest_query"]
    slowest = report["targets"].get("slowest_query")
    if slowest:
        lines += ["", f"slowest corpus-wide query at {results[-1]['chunks']:,} chunks: {slowest['name']}"]
        lines += [f"  {slowest['ms']:.1f} ms", *("  " + line for line in slowest["plan"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
