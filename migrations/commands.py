"""The `migrate` commands wired to their stores: one function per command, no printing."""

import logging
import time
from contextlib import closing
from pathlib import Path

from migrations import reindex
from producer import commands as producer_commands
from producer.dispatch import send_pending
from producer.evaluate import evaluate, load_cases
from workers.core import schema
from workers.core.constants import DENSE, STATE_BUILDING, STATE_RETIRED
from workers.core.errors import InvalidInput, QualityGateFailed, ServiceUnavailable
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, postgres

log = logging.getLogger(__name__)


def migrate_db(settings: FleetSettings) -> dict:
    with closing(postgres.open_connection(settings)) as conn:
        applied = schema.apply(conn)
        (current,) = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return {"applied": [f"{m.version:04d}_{m.name}" for m in applied], "schema_version": current}


# Rounds of "embed what arrived, try the switch again" before giving up on a busy ingest.
CUTOVER_ROUNDS = 5


def run_reindex(
    settings: FleetSettings,
    model: str | None,
    dim: int | None,
    dry_run: bool,
    eval_file: Path | None,
    cutover: bool,
    force: bool,
    max_regression: float,
    quantize: str | None = None,
    canary: float | None = None,
    mode: str | None = None,
) -> dict:
    """Plan, build green, verify, gate on quality (searching in `mode`), cut over (or, with
    `canary`, let green answer that share of the searches first). Resumes a build a killed run
    left. `model` None: the live index's model, rebuilt with keyword search (`--same-model`)."""
    if canary is not None and not 0 < canary <= 100:
        raise InvalidInput(f"--canary takes a share of the searches above 0 and at most 100 (%), not {canary}")
    cases = load_cases(eval_file) if eval_file else None
    with closing(postgres.connect(settings)) as conn:
        plan = reindex.make_plan(conn, model, dim, quantize if model is None else quantize or settings.quantize)
        report: dict = {"plan": plan.to_dict(), "cutover": False}
        if dry_run:
            return report
        if plan.chunks_over_model_limit and not force:
            raise InvalidInput(plan.warnings[0])
        client = milvus.connect(settings)
        blue = catalog.live_version(conn)
        green = reindex.start_green(conn, client, plan)
        report["green"] = {
            "id": green.id,
            "name": green.collection,
            "model": green.model,
            "dim": green.dim,
            "quantize": green.quantize,
        }
        started = time.perf_counter()
        embedded = _backfill(settings, conn, client, blue, green, bool(plan.derive_from_version))
        seconds = time.perf_counter() - started
        report["backfill"] = {"chunks": embedded, "seconds": seconds, "chunks_per_s": embedded / seconds}
        verification = reindex.verify(conn, client, green)
        report["verification"] = verification.to_dict()
        if verification.problems and not force:
            raise InvalidInput(f"{green.collection} is not ready: {'; '.join(verification.problems)}")
        if cases:
            report["eval"] = _gate(conn, client, blue, green, cases, settings.device, max_regression, force, mode)
        else:
            warning = (
                "no quality gate ran (no --eval FILE): the new version is not compared with the live one; "
                "run `producer eval FILE` after the cutover, `migrate rollback` if it got worse"
            )
            log.warning(warning)
            report["warnings"] = [warning]
        if canary is not None:
            milvus.ensure_loaded(client, green.collection)  # loaded before any search can reach it
            catalog.set_canary(conn, green.id, canary)
            report["canary"] = {"name": green.collection, "percent": canary}
        elif cutover:
            started = time.perf_counter()
            report["caught_up_at_cutover"] = _switch(settings, conn, client, green, force)
            report["cutover"] = True
            report["cutover_seconds"] = time.perf_counter() - started
        return report


def _backfill(settings, conn, client, blue, green, derive: bool) -> int:
    """Embed every chunk green lacks: from blue's vectors when only the dimension shrinks, then
    through the workers (all of them, or what blue did not have)."""
    derived = reindex.derive_vectors(conn, client, blue, green) if derive else 0
    embedded = derived + _embed_pending(settings, conn, green)
    milvus.seal(client, [green.collection])
    return embedded


def _embed_pending(settings: FleetSettings, conn, version) -> int:
    """Send every chunk `version` lacks to the workers (in-process without a broker) and wait."""
    reindex.fill_pending(conn, version)
    dispatcher = producer_commands.dispatcher_for(settings)
    try:
        sent = send_pending(dispatcher, conn, version)
        dispatcher.wait(conn, [version])
    except BaseException:  # Ctrl-C, a service gone: stop now; what is not embedded stays pending
        dispatcher.close(abandon=True)
        raise
    return sent


def _switch(settings: FleetSettings, conn, client, version, force: bool) -> int:
    """Make `version` live, first embedding chunks ingested meanwhile; returns how many those were."""
    caught_up = 0
    for _ in range(CUTOVER_ROUNDS):
        if reindex.cutover(conn, client, version, force):
            return caught_up
        caught_up += _embed_pending(settings, conn, version)
    raise ServiceUnavailable(
        f"chunks keep arriving faster than {version.collection} catches up; run the command again later"
    )


def _gate(conn, client, blue, green, cases, device: str, max_regression: float, force: bool, mode) -> dict:
    """Green against blue on the eval cases, refused when its MRR dropped by more than
    `max_regression` in any mode measured. With `mode`, that one (blue in its own where it cannot
    answer it: built without keyword search). Without, each as it will serve (its default mode),
    and also both dense where that is not already it: keyword search, the same on both sides,
    would otherwise hide a worse model from the gate, and `/v1/embeddings` serves the model alone."""
    results = _compared(conn, client, blue, green, cases, device, mode)
    if mode is None and results["green"]["mode"] != DENSE:
        results[DENSE] = _compared(conn, client, blue, green, cases, device, DENSE)
    if not force:
        for measured in (results, results.get(DENSE)):
            if measured is not None and measured["mrr_drop"] > max_regression:
                raise QualityGateFailed(
                    f"green MRR {measured['green']['mrr']:.3f} ({measured['green']['mode']}) is "
                    f"{measured['mrr_drop']:.3f} below blue's {measured['blue']['mrr']:.3f} "
                    f"({measured['blue']['mode']}; allowed {max_regression}): not cutting over; "
                    "pass --force to cut over anyway"
                )
    return results


def _compared(conn, client, blue, green, cases, device: str, mode: str | None) -> dict:
    results = {
        "blue": evaluate(conn, client, blue, cases, device, mode if mode in blue.modes else None),
        "green": evaluate(conn, client, green, cases, device, mode),
    }
    results["mrr_drop"] = results["blue"]["mrr"] - results["green"]["mrr"]
    return results


def status(settings: FleetSettings) -> list[dict]:
    with closing(postgres.connect(settings)) as conn:
        return reindex.version_status(conn)


def promote(settings: FleetSettings, force: bool = False) -> dict:
    """Cut over to the canary exactly as a plain re-index would: what arrived meanwhile embedded,
    verified, then the switch."""
    with closing(postgres.connect(settings)) as conn:
        client = milvus.connect(settings)
        found = catalog.canary(conn)
        if found is None:
            raise InvalidInput("there is no canary to promote: `migrate reindex --model M --canary P` starts one")
        version, percent = found
        caught_up = _embed_pending(settings, conn, version)
        verification = _verified(conn, client, version, force, "`--force` promotes anyway")
        caught_up += _switch(settings, conn, client, version, force)
    return {
        "promoted": version.collection,
        "percent": percent,
        "chunks_caught_up": caught_up,
        "verification": verification.to_dict(),
    }


def _verified(conn, client, version, force: bool, anyway: str) -> reindex.Verification:
    """`version` checked as a cutover checks it; refused with its problems unless `force`."""
    verification = reindex.verify(conn, client, version)
    if verification.problems and not force:
        raise InvalidInput(
            f"{version.collection} is not ready to serve: {'; '.join(verification.problems)}; "
            "`migrate retry` embeds failed chunks again, `migrate verify --repair` restores missing vectors, "
            f"{anyway}"
        )
    return verification


def end_canary(settings: FleetSettings) -> dict | None:
    """All searches back on the live version; the canary stays built (promote or abort it later).
    None when there is no canary."""
    with closing(postgres.connect(settings)) as conn:
        found = catalog.canary(conn)
        if found is None:
            return None
        catalog.set_canary(conn, found[0].id, None)
        live = catalog.live_version(conn)
    return {"from": found[0].collection, "to": live.collection, "canary_ended": True}


def rollback(settings: FleetSettings, force: bool = False) -> dict:
    """Back to the previous version, after embedding for it the chunks ingested since it retired,
    verified as a cutover is (every chunk embedded and in Milvus, unit vectors of its dimension).
    With a canary running, it is the canary that ends: every search back on the live version."""
    ended = end_canary(settings)
    if ended is not None:
        return {**ended, "chunks_caught_up": 0, "verification": None}
    with closing(postgres.connect(settings)) as conn:
        client = milvus.connect(settings)
        current, previous = reindex.rollback_target(conn, client)
        caught_up = _embed_pending(settings, conn, previous)
        verification = _verified(conn, client, previous, force, "`--force` rolls back anyway")
        caught_up += _switch(settings, conn, client, previous, force)
    return {
        "from": current.collection,
        "to": previous.collection,
        "chunks_caught_up": caught_up,
        "verification": verification.to_dict(),
    }


def retry(settings: FleetSettings) -> dict:
    """Embed again the chunks recorded as failed for the live version and those being built."""
    return {"chunks_enqueued": producer_commands.retry(settings, include_pending=False)}


def cleanup(settings: FleetSettings, state: str = STATE_RETIRED) -> list[str]:
    """Drop the versions in `state`: retired ones (cleanup) or building ones (abort). A canary
    among them first stops answering: the query service's replicas get a few polls to notice,
    so that no search is in flight on a collection that goes."""
    if state == STATE_BUILDING and end_canary(settings) is not None:
        time.sleep(2 * settings.api_poll_s + 1)
    with closing(postgres.connect(settings)) as conn:
        return [version.collection for version in reindex.cleanup(conn, milvus.connect(settings), state)]


def verify(settings: FleetSettings, repair: bool) -> list[dict]:
    """Milvus against Postgres for every kept version; with `repair`, fix and re-embed what is missing."""
    from migrations import consistency

    with closing(postgres.connect(settings)) as conn:
        client = milvus.connect(settings)
        checks = consistency.check_all(conn, client, repair)
        for check in checks:
            if check.repaired and check.missing:
                version = catalog.version_by_collection(conn, check.name)
                if version.state != STATE_RETIRED:
                    _embed_pending(settings, conn, version)
        return [check.to_dict() for check in checks]
