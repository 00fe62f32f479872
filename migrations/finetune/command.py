"""`migrate finetune`: read the pairs, measure the base, train, measure the candidate, write the
model directory with its `training.json`. It switches nothing: `migrate reindex --model DIR
--eval FILE` is the one way a candidate reaches the live index, through the same quality gate.

Everything that can be wrong with the input is found before anything is written.
"""

import hashlib
import json
import logging
import random
import shutil
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from migrations.finetune import compare, negatives, require_train_extra, train
from migrations.finetune.corpus import CorpusChunk, corpus_pairs, read_chunks
from migrations.finetune.feedback import feedback_pairs
from migrations.finetune.pairs import Pair, PairsReport, read_pairs, require_enough
from migrations.finetune.train import LORA_ALPHA, LORA_DROPOUT, LORA_RANK, WARMUP_RATIO, TrainOptions
from producer.evaluate import EvalCase, load_cases
from workers.core.access import AccessLevel
from workers.core.errors import InvalidInput
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, milvus, postgres
from workers.embedding import resolve_model
from workers.embedding.model_info import ModelInfo
from workers.embedding.sentence_transformer import pick_device

log = logging.getLogger(__name__)

HELD_OUT_SHARE = 0.1
MIN_HELD_OUT = 2
RUN_FILE = "run.json"  # an unfinished run: what it was started with, to resume only the same
TRAINING_FILE = "training.json"  # a finished one


@dataclass
class FinetuneRequest:
    pairs: list[Path] = field(default_factory=list)
    from_corpus: bool = False
    from_feedback: bool = False
    max_level: AccessLevel = AccessLevel.public
    base: str | None = None
    out: Path | None = None
    eval_file: Path | None = None
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float | None = None
    lora: bool = False
    dim: int | None = None
    overwrite: bool = False


@dataclass
class Prepared:
    """Everything read and checked before a byte is written."""

    request: FinetuneRequest
    options: TrainOptions
    info: ModelInfo
    pairs: list[Pair]
    sources: list[int | None]  # each pair's own document, where it came from the corpus
    chunks: list[CorpusChunk]  # the indexed text at or below --max-level
    reports: list[PairsReport]
    corpus_report: PairsReport | None
    feedback_report: PairsReport | None
    cases: list[EvalCase] | None


def run(settings: FleetSettings, request: FinetuneRequest) -> dict:
    require_train_extra(request.lora)
    _check_numbers(request)
    if not request.pairs and not request.from_corpus and not request.from_feedback:
        raise InvalidInput("no training pairs: give --pairs FILE (repeatable), --from-corpus or --from-feedback")
    file_pairs, reports = read_pairs(request.pairs) if request.pairs else ([], [])
    cases = load_cases(request.eval_file) if request.eval_file else None
    with closing(postgres.connect(settings)) as conn:
        base = _base_model(conn, request.base)
        info = resolve_model(base)
        if request.dim and request.dim > info.dim:
            raise InvalidInput(f"--dim {request.dim} is above {base}'s {info.dim} dimensions: give at most {info.dim}")
        chunks = read_chunks(conn, request.max_level)
        pairs, sources = list(file_pairs), [None] * len(file_pairs)
        feedback_report = corpus_report = None
        if request.from_feedback:  # first: a person's verdict wins over a weak pair with the same text
            feedback_report = _add_made(pairs, sources, *feedback_pairs(conn, request.max_level))
        if request.from_corpus:
            corpus = PairsReport("(indexed chunks)", "", "corpus")
            corpus_report = _add_made(pairs, sources, corpus_pairs(chunks), corpus)
        require_enough(pairs, reports + [report for report in (feedback_report, corpus_report) if report])
        out = request.out or Path(f"finetuned-{Path(base).name}")
        options = TrainOptions(
            base, out, request.epochs, request.batch_size, request.learning_rate, request.lora, request.dim, info.dim
        )
        _prepare_out(out, _fingerprint(request, base, reports, len(pairs)), request.overwrite)
        prepared = Prepared(
            request, options, info, pairs, sources, chunks, reports, corpus_report, feedback_report, cases
        )
        return _finetune(settings, conn, prepared)


def _finetune(settings: FleetSettings, conn: psycopg.Connection, prepared: Prepared) -> dict:
    """Measure the base, mine negatives where the pairs bring none, train, save, measure again."""
    request, options, info, cases = prepared.request, prepared.options, prepared.info, prepared.cases
    options.device = pick_device(settings.device)
    dim = request.dim or info.dim
    training, held_out = _split(prepared.pairs, prepared.sources, cases is None)
    model = train.load_model(options.base, options.device)

    def measure(name: str) -> dict:
        if cases:  # a client each time: training may have left the last one idle for long
            return compare.on_index(conn, milvus.connect(settings), name, dim, cases, options.device)
        return compare.on_pairs(model, [pair for pair, _ in held_out], info.query_prompt, request.dim)

    before = measure(options.base)
    train_pairs = [pair for pair, _ in training]
    if any(pair.negative is None for pair in train_pairs):
        sources = [source for _, source in training]
        train_pairs = negatives.mine(model, train_pairs, prepared.chunks, info.query_prompt, sources)
    result = train.train(model, train_pairs, options, info.query_prompt)
    train.save(model, options.out)
    after = measure(str(options.out.resolve()))
    record = _record(prepared, training, held_out, train_pairs, result, before, after)
    (options.out / TRAINING_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2))
    (options.out / RUN_FILE).unlink(missing_ok=True)
    return record


def _record(prepared: Prepared, training, held_out, train_pairs, result, before: dict, after: dict) -> dict:
    """training.json: the data with its hashes and counts, the settings, the losses, both measures."""
    request, options, info = prepared.request, prepared.options, prepared.info
    # Before mining, only file pairs (no source) and feedback pairs (a source) carry a negative.
    from_files = sum(1 for pair, source in training if pair.negative and source is None)
    from_feedback = sum(1 for pair, source in training if pair.negative and source is not None)
    given = from_files + from_feedback
    with_negative = sum(1 for pair in train_pairs if pair.negative)
    out = options.out.resolve()
    return {
        "base_model": options.base,
        "base_dim": info.dim,
        "dim": request.dim or info.dim,
        "device": options.device,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "files": [report.to_dict() for report in prepared.reports],
            "from_corpus": prepared.corpus_report.to_dict() if prepared.corpus_report else None,
            "from_feedback": prepared.feedback_report.to_dict() if prepared.feedback_report else None,
            "max_level": request.max_level.name,
            "levels_used": _levels_used(prepared.chunks, training, train_pairs),
            "pairs": len(prepared.pairs),
            "train_pairs": len(train_pairs),
            "held_out_pairs": len(held_out),
            "hard_negatives": {
                "from_files": from_files,
                "from_feedback": from_feedback,
                "mined": with_negative - given,
                "none": len(train_pairs) - with_negative,
            },
        },
        "hyperparameters": {
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "learning_rate": options.learning_rate,
            "warmup_ratio": WARMUP_RATIO,
            "seed": options.seed,
            "loss": result.loss,
            "lora": {"r": LORA_RANK, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT} if options.lora else None,
            "query_prompt": info.query_prompt,
        },
        "training": {
            "steps": result.steps,
            "seconds": round(result.seconds, 2),
            "resumed_from_step": result.resumed_from_step,
            "losses": result.losses,
        },
        "evaluation": {
            "method": "index" if prepared.cases else "held-out pairs",
            "eval_file": _file_digest(request.eval_file) if request.eval_file else None,
            "before": before,
            "after": after,
            "mrr_change": after["mrr"] - before["mrr"],
        },
        "model": str(out),
        "next": f"migrate reindex --model {out}" + (f" --dim {request.dim}" if request.dim else "") + " --eval FILE",
    }


def _check_numbers(request: FinetuneRequest) -> None:
    for name, value in (("--epochs", request.epochs), ("--batch-size", request.batch_size)):
        if value < 1:
            raise InvalidInput(f"{name} must be 1 or more, not {value}")
    if request.learning_rate is not None and not 0 < request.learning_rate < 1:
        raise InvalidInput(f"--learning-rate must be between 0 and 1, not {request.learning_rate}")
    if request.dim is not None and request.dim < 1:
        raise InvalidInput(f"--dim must be 1 or more, not {request.dim}")


def _base_model(conn, base: str | None) -> str:
    if base is None:
        live = catalog.live_version(conn)
        if live is None:
            raise InvalidInput("there is no live index to take the base model from: pass --base MODEL")
        base = live.model
    if resolve_model(base).is_test_model:
        raise InvalidInput(f"{base} is a test model with nothing to train: pass --base with a real model")
    return base


def _add_made(pairs: list[Pair], sources: list, made: list[tuple[Pair, int]], report: PairsReport) -> PairsReport:
    """Add the pairs made from the index (each with its document) that are not already among
    `pairs` (from files: source None); counted in `report`."""
    seen = set(pairs)
    for pair, document_id in made:
        if report.admit(pair, seen):
            pairs.append(pair)
            sources.append(document_id)
    return report


def _split(pairs: list[Pair], sources: list, hold_out: bool):
    """(training, held out), each as (pair, source document); a query's pairs stay on one side."""
    together = list(zip(pairs, sources, strict=True))
    if not hold_out:
        return together, []
    queries = sorted({pair.query for pair in pairs})
    random.Random(42).shuffle(queries)
    held_queries = set(queries[: max(MIN_HELD_OUT, round(len(queries) * HELD_OUT_SHARE))])
    return (
        [item for item in together if item[0].query not in held_queries],
        [item for item in together if item[0].query in held_queries],
    )


def _levels_used(chunks, training, train_pairs) -> list[str]:
    """The access levels of the indexed text that went into training: corpus pairs and mined negatives."""
    level_of = {chunk.document_id: chunk.level for chunk in chunks}
    used = {level_of[source] for _, source in training if source is not None}
    negatives = {pair.negative for pair in train_pairs if pair.negative}
    used |= {chunk.level for chunk in chunks if chunk.text in negatives}
    return [level.name for level in sorted(used)]


def _fingerprint(request: FinetuneRequest, base: str, reports: list[PairsReport], pairs: int) -> dict:
    return {
        "base": base,
        "files": [report.sha256 for report in reports],
        "from_corpus": request.from_corpus,
        "from_feedback": request.from_feedback,
        "max_level": request.max_level.name,
        "pairs": pairs,
        "epochs": request.epochs,
        "batch_size": request.batch_size,
        "learning_rate": request.learning_rate,
        "lora": request.lora,
        "dim": request.dim,
    }


def _prepare_out(out: Path, fingerprint: dict, overwrite: bool) -> None:
    """An empty (or new) directory, or the unfinished run of the same command to resume."""
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file: give a directory")
    if out.is_dir() and any(out.iterdir()):
        run_file = out / RUN_FILE
        same_run = run_file.is_file() and json.loads(run_file.read_text()) == fingerprint
        if same_run and not overwrite:
            log.info("resuming the unfinished run in %s", out)
            return
        if not overwrite:
            raise InvalidInput(
                f"--out {out} exists and is not empty"
                + (" (an unfinished run with other data or settings)" if run_file.is_file() else "")
                + ": give another directory, or --overwrite to replace it"
            )
        if out.resolve() in (Path("/"), Path.home().resolve(), Path.cwd().resolve()):
            raise InvalidInput(f"--out {out} is not a directory to overwrite: give a directory of its own")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(fingerprint, indent=2))


def _file_digest(path: Path) -> dict:
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _with_negative(hard_negatives: dict) -> int:
    return hard_negatives["from_files"] + hard_negatives["from_feedback"] + hard_negatives["mined"]


def describe(record: dict) -> str:
    """The result for people: what was trained, on what, and before against after."""
    data, evaluation = record["data"], record["evaluation"]
    before, after = evaluation["before"], evaluation["after"]
    lines = [
        f"trained {record['base_model']} on {data['train_pairs']} pairs "
        f"({_with_negative(data['hard_negatives'])} with a hard negative) "
        f"in {record['training']['steps']} steps, {record['training']['seconds']:.0f}s ({record['device']})",
        f"{evaluation['method']}: MRR@10 {before['mrr']:.3f} -> {after['mrr']:.3f} ({evaluation['mrr_change']:+.3f}), "
        f"Hit@1 {before['hit_at_1']:.3f} -> {after['hit_at_1']:.3f}, "
        f"Hit@5 {before['hit_at_5']:.3f} -> {after['hit_at_5']:.3f}",
        f"model: {record['model']} (nothing switched)",
        f"next: {record['next']}",
    ]
    return "\n".join(lines)
