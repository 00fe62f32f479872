"""The `migrate` commands wired to their stores: one function per command, no printing."""

import time
from contextlib import closing
from pathlib import Path

from migrations import reindex, runner
from producer.commands import dispatcher_for
from producer.dispatch import send_pending
from producer.evaluate import evaluate, load_cases
from workers.errors import InvalidInput
from workers.settings import FleetSettings
from workers.stores import catalog, milvus, postgres


def migrate_db(settings: FleetSettings) -> dict:
    with closing(postgres.open_connection(settings)) as conn:
        applied = runner.apply(conn)
        (current,) = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return {"applied": [f"{m.version:04d}_{m.name}" for m in applied], "schema_version": current}


def run_reindex(
    settings: FleetSettings,
    model: str,
    dim: int | None,
    dry_run: bool,
    eval_file: Path | None,
    cutover: bool,
    force: bool,
    max_regression: float,
) -> dict:
    """Plan, build green, verify, gate on quality, cut over. Resumes a build a killed run left."""
    cases = load_cases(eval_file) if eval_file else None
    with closing(postgres.connect(settings)) as conn:
        plan = reindex.make_plan(conn, model, dim)
        report: dict = {"plan": plan.to_dict(), "cutover": False}
        if dry_run:
            return report
        if plan.chunks_over_model_limit and not force:
            raise InvalidInput(plan.warnings[0])
        client = milvus.connect(settings)
        blue = catalog.live_version(conn)
        green = reindex.start_green(conn, client, plan.model, plan.dim)
        report["green"] = {"id": green.id, "name": green.collection, "model": green.model, "dim": green.dim}
        started = time.perf_counter()
        embedded = _backfill(settings, conn, client, blue, green, bool(plan.derive_from_version))
        seconds = time.perf_counter() - started
        report["backfill"] = {"chunks": embedded, "seconds": seconds, "chunks_per_s": embedded / seconds}
        verification = reindex.verify(conn, client, green)
        report["verification"] = verification.to_dict()
        if verification.problems and not force:
            raise InvalidInput(f"{green.collection} is not ready: {'; '.join(verification.problems)}")
        if cases:
            report["eval"] = _gate(conn, client, blue, green, cases, settings.device, max_regression, force)
        if cutover:
            started = time.perf_counter()
            reindex.cutover(conn, client, green)
            report["cutover"] = True
            report["cutover_seconds"] = time.perf_counter() - started
        return report


def _backfill(settings, conn, client, blue, green, derive: bool) -> int:
    """Embed every chunk pending for green, through the workers or from blue's vectors."""
    if derive:
        done = reindex.derive_vectors(conn, client, blue, green)
    else:
        dispatcher = dispatcher_for(settings)
        done = send_pending(dispatcher, conn, green, settings.task_chunks)
        dispatcher.wait(conn, [green])
    # Chunks ingested while green was created: the producer's dual write covers those after it.
    if reindex.fill_pending(conn, green):
        return done + _backfill(settings, conn, client, blue, green, derive=False)
    return done


def _gate(conn, client, blue, green, cases, device: str, max_regression: float, force: bool) -> dict:
    results = {
        "blue": evaluate(conn, client, blue, cases, device),
        "green": evaluate(conn, client, green, cases, device),
    }
    drop = results["blue"]["mrr"] - results["green"]["mrr"]
    results["mrr_drop"] = drop
    if drop > max_regression and not force:
        raise InvalidInput(
            f"green MRR {results['green']['mrr']:.3f} is {drop:.3f} below blue's {results['blue']['mrr']:.3f} "
            f"(allowed {max_regression}): not cutting over; pass --force to cut over anyway"
        )
    return results


def status(settings: FleetSettings) -> list[dict]:
    with closing(postgres.connect(settings)) as conn:
        return reindex.version_status(conn)


def rollback(settings: FleetSettings) -> dict:
    with closing(postgres.connect(settings)) as conn:
        client = milvus.connect(settings)
        current, previous = reindex.rollback(conn, client)
        # Chunks ingested while the newer version was live: embed them for the restored one.
        added = reindex.fill_pending(conn, previous)
        if added:
            dispatcher = dispatcher_for(settings)
            send_pending(dispatcher, conn, previous, settings.task_chunks)
            dispatcher.wait(conn, [previous])
    return {"from": current.collection, "to": previous.collection, "chunks_caught_up": added}


def cleanup(settings: FleetSettings) -> list[str]:
    with closing(postgres.connect(settings)) as conn:
        return [version.collection for version in reindex.cleanup(conn, milvus.connect(settings))]
