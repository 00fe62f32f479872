"""The `producer` command: ingest, status, search, eval, retry, serve-metrics, serve, keys, audit.

Settings are read once here. torch is imported only by commands that embed in this process
(`ingest` without a broker, `search`).
"""

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from workers.core.access import AccessLevel
from workers.core.constants import MAX_TOP_K, SEARCH_MODES
from workers.core.entrypoint import run_command
from workers.core.errors import FleetError
from workers.core.settings import FleetSettings

log = logging.getLogger("producer")

# `producer ingest` finished, but refused some files (each listed with its reason).
EXIT_REFUSED = 3


def main(argv: list[str] | None = None) -> int:
    return run_command("producer", _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="producer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="chunk documents under PATH and embed them")
    ingest.add_argument("path", type=Path, help="folder of documents: Markdown, text, PDF, Word (.docx), HTML")
    ingest.add_argument(
        "--level", type=_level, help="access level of documents that declare none (front matter, sidecar, .fleet.yaml)"
    )
    ingest.add_argument("--wait", action="store_true", help="with a broker: block until the work is embedded")
    ingest.add_argument(
        "--prune", action="store_true", help="remove documents no longer under PATH (PATH is the whole corpus)"
    )
    _add_json(ingest, _run_ingest)

    status = commands.add_parser("status", help="documents, chunks and embedding progress of the live index")
    _add_json(status, _run_status)

    search = commands.add_parser("search", help="search the live index as an access level")
    search.add_argument("query")
    search.add_argument("--level", type=_level, required=True, help=f"reader's level: {', '.join(AccessLevel.names())}")
    search.add_argument("--top-k", type=_top_k, default=5, help=f"hits to return, 1 to {MAX_TOP_K} (default 5)")
    _add_mode(search)
    search.add_argument(
        "--weights", type=_weights, metavar="DENSE,KEYWORD", help="hybrid: weigh the two rankings (default RRF)"
    )
    _add_json(search, _run_search)

    evaluate = commands.add_parser("eval", help="MRR@10, Hit@1 and Hit@5 of the live index on labelled queries")
    evaluate.add_argument("file", type=Path, help='JSON lines of {"query", "level", "expected_document"}')
    _add_mode(evaluate)
    evaluate.add_argument(
        "--push-metrics",
        action="store_true",
        help="keep the figures for `producer serve-metrics` (fleet_eval_mrr, fleet_eval_hit_at_5) and its alerts",
    )
    _add_json(evaluate, _run_eval)

    exporter = commands.add_parser("serve-metrics", help="export queue depth, backlog, rate and ETA to Prometheus")
    exporter.add_argument("--port", type=int, default=9101)
    exporter.set_defaults(run=_run_exporter, json=False)

    retry = commands.add_parser("retry", help="embed again the chunks recorded as failed")
    retry.add_argument("--pending", action="store_true", help="also re-send chunks still pending (lost tasks)")
    _add_json(retry, _run_retry)

    serve = commands.add_parser("serve", help="serve search and embeddings over HTTP to applications (API keys)")
    serve.add_argument("--host", help="address to listen on (default FLEET_API_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default FLEET_API_PORT, 8080)")
    serve.set_defaults(run=_run_serve, json=False)
    _add_keys(commands)

    audit = commands.add_parser("audit", help="who searched for what, at which level, and which documents they got")
    audit.add_argument("--key", help="searches and events of this key name")
    audit.add_argument("--level", type=_level, help="searches run at this level")
    audit.add_argument("--document", help="searches that returned this document (its path as ingested)")
    audit.add_argument("--since", type=_when, help="from this time: ISO 8601 (UTC unless it says), or 7d, 24h, 30m ago")
    audit.add_argument("--until", type=_when, help="before this time (same forms)")
    audit.add_argument("--limit", type=_top_k, default=100, help=f"at most this many of each, 1 to {MAX_TOP_K}")
    _add_json(audit, _run_audit)
    return parser


def _add_keys(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="API keys of `producer serve`: each carries an access level")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (once: only its hash is kept)")
    create.add_argument("--name", required=True, help="who or what uses the key, e.g. intranet-search")
    create.add_argument(
        "--level", type=_level, required=True, help=f"highest level it reads: {', '.join(AccessLevel.names())}"
    )
    create.add_argument(
        "--rate", type=float, metavar="R", help="requests per second it may send (default FLEET_API_RATE_PER_KEY)"
    )
    create.add_argument(
        "--burst", type=int, metavar="B", help="requests it may send at once (with --rate; default a second's worth)"
    )
    create.add_argument(
        "--expires", type=_expiry, metavar="WHEN", help="refused from then: 90d, 12h, 30m from now, or an ISO 8601 time"
    )
    _add_json(create, _run_keys_create)
    listing = actions.add_parser("list", help="names, levels, limits, created and last used (never the keys)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    _add_json(listing, _run_keys_list)
    revoke = actions.add_parser("revoke", help="revoke a key: refused by the service within seconds")
    revoke.add_argument("name")
    _add_json(revoke, _run_keys_revoke)


def _add_json(parser: argparse.ArgumentParser, run: Callable) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def _top_k(value: str) -> int:
    try:
        top_k = int(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from err
    if not 1 <= top_k <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"{top_k} is outside 1 to {MAX_TOP_K}")
    return top_k


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1 to 65535)")
    return int(value)


def _add_mode(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=SEARCH_MODES,
        help="dense (vectors), keyword (BM25) or hybrid (both, RRF); default hybrid where the index has the text",
    )


def _weights(value: str):
    from producer.search import parse_weights

    try:
        return parse_weights(value)
    except FleetError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _when(value: str):
    """An ISO 8601 time (UTC unless it names its zone), or a span ago: `7d`, `24h`, `30m`."""
    return _time(value, -1, "7d")


def _expiry(value: str):
    """An ISO 8601 time (UTC unless it names its zone), or a span from now: `90d`, `12h`, `30m`."""
    return _time(value, 1, "90d")


def _time(value: str, direction: int, example: str):
    from datetime import UTC, datetime, timedelta

    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[:-1].isdigit() and value[-1:] in units:
        return datetime.now(UTC) + direction * timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time: use 2026-12-01, 2026-12-01T08:00 or {example}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _level(value: str) -> AccessLevel:
    try:
        return AccessLevel.parse(value)
    except FleetError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _print(args: argparse.Namespace, payload: object, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        human()


# -- commands ---------------------------------------------------------------------------------


def _run_ingest(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import commands

    report = commands.ingest(settings, args.path, args.level, wait=args.wait, prune=args.prune)
    _print(args, report.to_dict(), lambda: print(*report.lines(), sep="\n"))
    return EXIT_REFUSED if report.rejected else 0


def _run_status(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import status as showing

    status = showing.status(settings)
    _print(args, status, lambda: _print_status(status))
    return 0


def _print_status(status: dict) -> None:
    index = status["index"]
    print(f"index: {index['name']} ({index['model']}, {index['dim']} dims)" if index else "index: none yet")
    print(
        f"documents {status['documents']}, chunks {status['chunks']}: embedded {status['embedded']}, "
        f"pending {status['pending']}, failed {status['failed']}"
    )
    eta = "stalled" if status["stalled"] else "-" if status["eta_s"] is None else f"{status['eta_s']:.0f}s"
    print(f"backlog {status['backlog']} chunks at {status['rate_chunks_per_s']:.1f} chunks/s: eta {eta}")
    if status["lost_chunks"]:
        print(f"LOST {status['lost_chunks']} chunks: their tasks were lost; the workers' reconciler sends them again")
    for worker in status["stuck_workers"]:
        print(
            f"STUCK {worker['name']}: holds {worker['chunks_held']} chunks, "
            f"no progress for {worker['seconds_without_progress']:.0f}s"
        )
    for worker in status["gone_workers"]:
        print(
            f"GONE {worker['name']}: silent for {worker['seconds_since_seen']:.0f}s while holding "
            f"{worker['chunks_held']} chunks (sent again by the reconciler)"
        )


def _run_search(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import commands

    found = commands.search(settings, args.query, args.level, args.top_k, args.mode, args.weights)
    _print(args, [hit.to_dict() for hit in found.hits], lambda: _print_hits(found))
    return 0


def _print_hits(found) -> None:
    from producer.documents import printable

    hits = found.hits
    print(f"{found.index}, {found.mode} search:")
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        snippet = printable(" ".join(hit.text.split())[:160])
        print(f"{rank}. {hit.score:.3f}  {printable(hit.citation())}  [{hit.access_level}]\n   {snippet}")


def _run_eval(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import commands

    result = commands.evaluate_live(settings, args.file, args.mode, args.push_metrics)
    _print(
        args,
        result,
        lambda: print(
            f"{result['index']} ({result['model']}, {result['dim']} dims, {result['mode']}) "
            f"on {result['queries']} queries: "
            f"MRR@10 {result['mrr']:.3f}, Hit@1 {result['hit_at_1']:.3f}, Hit@5 {result['hit_at_5']:.3f}"
            + ("; kept for serve-metrics" if result["pushed"] else "")
        ),
    )
    return 0


def _run_exporter(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer.exporter import serve

    log.info("serving fleet metrics on :%d/metrics", args.port)
    serve(settings, args.port)
    return 0


def _run_retry(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import commands

    sent = commands.retry(settings, include_pending=args.pending)
    _print(args, {"chunks_enqueued": sent}, lambda: print(f"{sent} chunks sent to embed again"))
    return 0


def _run_serve(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer.api.server import serve

    serve(settings, args.host or settings.api_host, args.port or settings.api_port)
    return 0


def _run_keys_create(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import keys

    limits = keys.Limits(args.rate, args.burst, args.expires)
    with _connection(settings) as conn:
        key = keys.create(conn, args.name, args.level, limits)
    created = {
        "name": args.name,
        "level": args.level.name,
        "key": key,
        "rate": args.rate,
        "burst": args.burst or (keys.default_burst(args.rate) if args.rate else None),
        "expires": args.expires.isoformat() if args.expires else None,
    }
    if args.json:
        _print(args, created, lambda: None)
    else:  # the key alone on stdout, so that KEY=$(producer keys create ...) works
        print(f"API key {args.name!r} ({args.level.name}); store it now, it is not shown again:", file=sys.stderr)
        print(key)
    return 0


def _run_keys_list(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import keys

    with _connection(settings) as conn:
        listed = [record.to_dict() for record in keys.list_keys(conn, include_revoked=args.all)]
    _print(args, listed, lambda: _print_keys(listed))
    return 0


def _print_keys(listed: list[dict]) -> None:
    if not listed:
        print("no API keys: create one with `producer keys create --name NAME --level LEVEL`")
    for key in listed:
        revoked = f"  REVOKED {key['revoked']}" if key.get("revoked") else ""
        rate = f"{key['rate']:g}/s burst {key['burst']}" if key["rate"] else "default rate"
        print(
            f"{key['name']:24s} {key['level']:14s} {key['prefix']}…  {rate}  expires {key['expires'] or 'never'}  "
            f"created {key['created']}  last used {key['last_used'] or 'never'}{revoked}"
        )


def _run_keys_revoke(args: argparse.Namespace, settings: FleetSettings) -> int:
    from producer import keys

    with _connection(settings) as conn:
        record = keys.revoke(conn, args.name)
    _print(args, record.to_dict(), lambda: print(f"revoked {record.name} ({record.prefix}…)"))
    return 0


def _run_audit(args: argparse.Namespace, settings: FleetSettings) -> int:
    from workers.core.stores import audit

    wanted = audit.AuditFilter(args.key, args.level, args.document, args.since, args.until, args.limit)
    with _connection(settings) as conn:
        searches = audit.find_searches(conn, wanted)
        # Events are about keys, not levels nor documents.
        events = audit.find_events(conn, wanted) if args.level is None and args.document is None else []
    found = {"searches": searches, "events": events}
    _print(args, found, lambda: _print_audit(found))
    return 0


def _print_audit(found: dict) -> None:
    from producer.documents import printable

    if not found["searches"] and not found["events"]:
        print("nothing recorded matches")
    for search in found["searches"]:
        query = search["query"] if search["query"] is not None else f"(hash {search['query_hash'][:12]}…)"
        print(
            f"{search['time']}  {search['key']} as {search['level']}  {search['index']} {search['mode']}  "
            f"{printable(query)!r}  {search['latency_ms']:.0f} ms"
        )
        for path in search["documents"]:
            print(f"    {printable(path)}")
    for event in found["events"]:
        status = f" {event['status']}" if event["status"] else ""
        who = event["key"] or "(no valid key)"
        print(f"{event['time']}  {event['kind']}{status}  {who}  {printable(event['detail'])}")


def _connection(settings: FleetSettings):
    from contextlib import closing

    from workers.core.stores import postgres

    return closing(postgres.connect(settings))


if __name__ == "__main__":
    sys.exit(main())
