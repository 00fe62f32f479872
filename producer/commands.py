"""The producer's commands wired to their stores: one function per command, no printing."""

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from producer import ingest as ingesting
from producer import search as searching
from producer.dispatch import CeleryDispatcher, Dispatcher, InProcessDispatcher, send_pending
from producer.evaluate import evaluate, load_cases, record_result
from producer.index import serving_version
from workers.core.access import AccessLevel
from workers.core.constants import KEYWORD
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, postgres, progress
from workers.core.stores.milvus import Weights
from workers.embedding import resolve_model


def dispatcher_for(settings: FleetSettings) -> Dispatcher:
    return CeleryDispatcher(settings) if settings.uses_broker else InProcessDispatcher(settings)


def ingest(
    settings: FleetSettings, path: Path, level: AccessLevel | None, wait: bool, prune: bool = False
) -> ingesting.IngestReport:
    info = resolve_model(settings.model)
    with closing(postgres.connect(settings)) as conn:
        client = milvus.LazyClient(settings)
        dispatcher = dispatcher_for(settings)
        try:
            report = ingesting.ingest(path, level, settings, conn, client, info, dispatcher, prune)
            if wait or not settings.uses_broker:
                versions = catalog.active_versions(conn)
                dispatcher.wait(conn, versions)
                if report.chunks_enqueued or client.opened:  # something was written
                    milvus.seal(client, [version.collection for version in versions])
            progress.fold_counts(conn)
        except BaseException:  # Ctrl-C, a service gone: stop now; what is not embedded stays pending
            dispatcher.close(abandon=True)
            raise
        return report


@dataclass(frozen=True)
class Found:
    hits: list[searching.SearchHit]
    mode: str  # the mode that ran
    index: str  # the collection that answered


def search(
    settings: FleetSettings,
    query: str,
    level: AccessLevel,
    top_k: int,
    mode: str | None = None,
    weights: Weights | None = None,
) -> Found:
    """The live index searched as `level`, in `mode` (default: hybrid where it can, else dense)."""
    searching.check_query(query)  # before the model loads
    with closing(postgres.connect(settings)) as conn:
        client = milvus.connect(settings)
        version = serving_version(conn, client)
        mode = searching.resolve_mode(version, mode)
        searching.check_weights(mode, weights)
        milvus.ensure_loaded(client, version.collection)
        encoder = None if mode == KEYWORD else searching.encoder_for(version.model, settings.device, version.quantize)
        hits = searching.search(conn, client, encoder, version, query, level, top_k, mode, weights)
        return Found(hits, mode, version.collection)


def retry(settings: FleetSettings, include_pending: bool) -> int:
    """Send failed (and, if asked, pending) chunks of the active versions to be embedded again."""
    with closing(postgres.connect(settings)) as conn:
        dispatcher = dispatcher_for(settings)
        versions = catalog.active_versions(conn)
        sent = 0
        for version in versions:
            failed = progress.retry_failed(conn, version.id)
            if include_pending or not settings.uses_broker:
                sent += send_pending(dispatcher, conn, version)
            else:
                sent += dispatcher.send(conn, version.id, failed)
        if not settings.uses_broker:
            dispatcher.wait(conn, versions)
        return sent


def evaluate_live(settings: FleetSettings, eval_file: Path, mode: str | None = None, push: bool = False) -> dict:
    """MRR@10, Hit@1 and Hit@5 of the index behind the alias on the cases in `eval_file`, in `mode`;
    with `push`, kept for `producer serve-metrics` to export (fleet_eval_mrr, fleet_eval_hit_at_5)."""
    cases = load_cases(eval_file)
    with closing(postgres.connect(settings)) as conn:
        client = milvus.connect(settings)
        version = serving_version(conn, client)
        milvus.ensure_loaded(client, version.collection)
        result = evaluate(conn, client, version, cases, settings.device, mode)
        if push:
            record_result(conn, result)
        return result | {"pushed": push}
