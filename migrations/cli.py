"""The `migrate` command: the Postgres schema, and blue-green re-indexing of the vectors.

migrate db                       apply the numbered SQL files not applied yet
migrate reindex --model M [...]  build a new index version, verify, gate, cut over
migrate finetune --pairs FILE    adapt a model to your pairs; before/after; switches nothing
migrate promote                  cut over to the canary (`reindex --canary PERCENT` started)
migrate status                   index versions with state, progress and ETA
migrate rollback                 point the alias back at the previous version
migrate cleanup --yes            drop retired versions' collections
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from workers.core.constants import QUANTIZE_MODES, SEARCH_MODES
from workers.core.entrypoint import run_command
from workers.core.settings import FleetSettings


def main(argv: list[str] | None = None) -> int:
    return run_command("migrate", _parser().parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    _command(commands, "db", "apply the numbered SQL files of migrations/ not applied yet", _run_db)

    reindex = _command(commands, "reindex", "re-embed everything with another model or dimension", _run_reindex)
    target = reindex.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="hub id or model directory of the new index")
    target.add_argument(
        "--same-model",
        action="store_true",
        help="the live index's model and dimension, rebuilt from its vectors with keyword search",
    )
    reindex.add_argument("--dim", type=int, help="dimension of the new index (default: the model's)")
    reindex.add_argument(
        "--quantize", choices=QUANTIZE_MODES, help="run the model quantised (default FLEET_QUANTIZE, none)"
    )
    reindex.add_argument("--dry-run", action="store_true", help="print the plan: chunks, tokens, time, storage")
    reindex.add_argument("--eval", type=Path, metavar="FILE", help="JSON lines of {query, level, expected_document}")
    reindex.add_argument("--max-regression", type=float, default=0.02, help="MRR drop that refuses cutover")
    reindex.add_argument(
        "--mode", choices=SEARCH_MODES, help="search mode of the quality gate (default: each version's own)"
    )
    reindex.add_argument("--no-cutover", action="store_true", help="build and verify, leave the alias as it is")
    reindex.add_argument("--force", action="store_true", help="cut over despite a failed check or quality gate")
    reindex.add_argument(
        "--canary", type=float, metavar="PERCENT", help="instead of cutting over, answer this share of searches from it"
    )

    finetune = _command(commands, "finetune", "fine-tune a model on your pairs, before/after", _run_finetune)
    finetune.add_argument(
        "--pairs", type=Path, action="append", default=[], metavar="FILE",
        help="TSV, CSV or JSON lines of (query, positive[, hard negative]); repeatable",
    )  # fmt: skip
    finetune.add_argument("--from-corpus", action="store_true", help="weak pairs from indexed chunks")
    finetune.add_argument(
        "--from-feedback",
        action="store_true",
        help="pairs from /v1/feedback: hits marked relevant, those marked not as hard negatives",
    )
    finetune.add_argument("--max-level", default="public", help="only text at or below it trains (default public)")
    finetune.add_argument("--base", help="model to start from (default: the live index's)")
    finetune.add_argument("--out", type=Path, help="model directory to write (default ./finetuned-BASE)")
    finetune.add_argument("--eval", type=Path, metavar="FILE", help="JSON lines of {query, level, expected_document}")
    finetune.add_argument("--epochs", type=int, default=3)
    finetune.add_argument("--batch-size", type=int, default=32, help="pairs per step (in-batch negatives)")
    finetune.add_argument(
        "--learning-rate", type=float, help="default 1e-4 (a model under 200M parameters), 2e-5, --lora 2e-4"
    )
    finetune.add_argument("--lora", action="store_true", help="train LoRA adapters (peft), merged at the end")
    finetune.add_argument("--dim", type=int, help="train for this dimension too (Matryoshka)")
    finetune.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    promote = _command(commands, "promote", "cut over to the canary, as a plain re-index would", _run_promote)
    promote.add_argument("--force", action="store_true", help="promote despite a failed check")
    _command(commands, "status", "index versions: state, embedded/total, ETA", _run_status)
    rollback = _command(commands, "rollback", "point the alias back at the previous index version", _run_rollback)
    rollback.add_argument("--force", action="store_true", help="roll back despite a failed check")
    _command(commands, "retry", "embed again the chunks that failed, for the live and the new versions", _run_retry)
    cleanup = _command(commands, "cleanup", "drop the collections of retired index versions", _run_cleanup)
    cleanup.add_argument("--yes", action="store_true", help="confirm: rollback to them is no longer possible")
    verify = _command(commands, "verify", "compare Milvus with Postgres for every kept version", _run_verify)
    verify.add_argument("--repair", action="store_true", help="delete orphan vectors, re-embed missing ones")
    abort = _command(commands, "abort", "abandon a re-index: drop the versions being built", _run_abort)
    abort.add_argument("--yes", action="store_true", help="confirm: their vectors are dropped")
    return parser


def _command(commands, name: str, help_text: str, run: Callable) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)
    return parser


def _emit(args: argparse.Namespace, payload: object, human: str) -> int:
    print(json.dumps(payload, ensure_ascii=False, indent=2) if args.json else human)
    return 0


def _run_db(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    result = commands.migrate_db(settings)
    names = ", ".join(result["applied"])
    return _emit(
        args, result, f"{'applied ' + names if names else 'schema up to date'} (version {result['schema_version']})"
    )


def _run_reindex(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    report = commands.run_reindex(
        settings,
        args.model,
        args.dim,
        args.dry_run,
        args.eval,
        not args.no_cutover,
        args.force,
        args.max_regression,
        args.quantize,
        args.canary,
        args.mode,
    )
    return _emit(args, report, _describe_reindex(report))


def _describe_reindex(report: dict) -> str:
    plan = report["plan"]
    lines = [
        f"plan: {plan['chunks']} chunks, {plan['tokens']} tokens of {plan['model']} at {plan['dim']} dims; "
        f"about {plan['estimated_seconds']:.0f}s ({plan['estimate_basis']}); "
        f"new collection about {plan['storage_bytes'] / 2**20:.1f} MiB",
        *plan["warnings"],
        *report.get("warnings", []),
    ]
    if "backfill" in report:
        fill = report["backfill"]
        lines.append(
            f"built {report['green']['name']}: {fill['chunks']} chunks in {fill['seconds']:.1f}s "
            f"({fill['chunks_per_s']:.1f} chunks/s)"
        )
    gate = report.get("eval", {})
    for compared in (gate, gate.get("dense")):
        for name in ("blue", "green"):
            if compared and name in compared:
                result = compared[name]
                lines.append(
                    f"{name} ({result['mode']}): MRR {result['mrr']:.3f}, Hit@1 {result['hit_at_1']:.3f}, "
                    f"Hit@5 {result['hit_at_5']:.3f}"
                )
    if "canary" in report:
        lines.append(
            f"canary: {report['canary']['name']} answers {report['canary']['percent']:g} % of the searches "
            "(each API key always from one version); `migrate status` compares, `migrate promote` cuts over, "
            "`migrate rollback` ends it"
        )
    elif report["cutover"]:
        lines.append(f"cut over: the alias `chunks` now serves {report['green']['name']}")
    elif "green" in report:
        lines.append(f"not cut over: {report['green']['name']} is built; `migrate reindex` again without --no-cutover")
    return "\n".join(lines)


def _run_finetune(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations.finetune import require_train_extra

    require_train_extra(args.lora)  # before the trainer's imports
    from migrations.finetune.command import FinetuneRequest, describe, run
    from workers.core.access import AccessLevel

    request = FinetuneRequest(
        pairs=args.pairs,
        from_corpus=args.from_corpus,
        from_feedback=args.from_feedback,
        max_level=AccessLevel.parse(args.max_level),
        base=args.base,
        out=args.out,
        eval_file=args.eval,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lora=args.lora,
        dim=args.dim,
        overwrite=args.overwrite,
    )
    record = run(settings, request)
    return _emit(args, record, describe(record))


def _run_status(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    versions = commands.status(settings)
    lines = []
    for v in versions:
        state = f"canary {v['canary_percent']:g}%" if v["canary_percent"] is not None else v["state"]
        lines.append(
            f"{v['name']:12s} {state:11s} {v['embedded']}/{v['total']} embedded, {v['failed']} failed, "
            f"eta {_seconds(v['eta_s'])}  {v['model']} ({v['dim']} dims; {', '.join(v['modes'])})"
        )
        if v["searches"] and v["searches"]["searches"]:
            s = v["searches"]
            lines.append(
                f"{'':12s} {s['searches']} searches, mean {s['mean_ms']:.1f} ms, {s['hits_per_search']:.1f} hits "
                f"per search, {100 * s['empty_share']:.1f} % with none"
            )
        if v["feedback"]:
            f = v["feedback"]
            lines.append(
                f"{'':12s} useful rate {100 * f['useful_rate']:.1f} % ({f['relevant']} of {f['marked']} hits "
                "given feedback marked relevant)"
            )
    return _emit(args, versions, "\n".join(lines) or "no index versions yet")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def _run_promote(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    result = commands.promote(settings, args.force)
    return _emit(args, result, f"promoted: the alias `chunks` now serves {result['promoted']}")


def _run_rollback(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    result = commands.rollback(settings, args.force)
    if result.get("canary_ended"):
        return _emit(args, result, f"canary {result['from']} ended: every search is answered by {result['to']}")
    return _emit(args, result, f"the alias `chunks` serves {result['to']} again (was {result['from']})")


def _run_retry(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    result = commands.retry(settings)
    return _emit(args, result, f"{result['chunks_enqueued']} chunks sent to embed again")


def _run_cleanup(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    retired = [v["name"] for v in commands.status(settings) if v["state"] == "retired"]
    if retired and not args.yes and not _confirm(f"drop {', '.join(retired)} for good (no rollback to them)?"):
        print("migrate cleanup: error: not confirmed; pass --yes to drop retired collections", file=sys.stderr)
        return 2
    dropped = commands.cleanup(settings)
    return _emit(args, {"dropped": dropped}, f"dropped {', '.join(dropped)}" if dropped else "nothing to drop")


def _run_verify(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    checks = commands.verify(settings, args.repair)
    _emit(args, checks, "\n".join(_describe_check(check) for check in checks) or "no index versions yet")
    return 0 if all(c["consistent"] or c["repaired"] for c in checks) else 1


def _describe_check(check: dict) -> str:
    verdict = "consistent" if check["consistent"] else f"{check['orphans']} orphans, {check['missing']} missing"
    repaired = " (repaired)" if check["repaired"] else ""
    counts = f"done {check['done_in_postgres']}, in Milvus {check['in_milvus']}"
    return f"{check['name']:12s} {check['state']:9s} {counts}: {verdict}{repaired}"


def _run_abort(args: argparse.Namespace, settings: FleetSettings) -> int:
    from migrations import commands

    building = [v["name"] for v in commands.status(settings) if v["state"] == "building"]
    if building and not args.yes and not _confirm(f"drop {', '.join(building)} (the re-index in progress)?"):
        print("migrate abort: error: not confirmed; pass --yes to drop the versions being built", file=sys.stderr)
        return 2
    dropped = commands.cleanup(settings, state="building")
    return _emit(args, {"dropped": dropped}, f"dropped {', '.join(dropped)}" if dropped else "nothing being built")


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


if __name__ == "__main__":
    sys.exit(main())
