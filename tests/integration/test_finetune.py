"""`migrate finetune` on CPU with all-MiniLM-L6-v2 and real English–Vietnamese pairs (IWSLT'15
TED talks, ops/bench/data): before and after on the real index path, the gate refusing a model
trained on mismatched pairs, LoRA merged into a plain model, Ctrl-C then resume, weak pairs from
the corpus at or below a level, and every bad input refused before anything is written."""

import csv
import json
import random
import re
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

import migrations.finetune
from migrations import commands as migrate
from migrations.finetune import command as finetune
from migrations.finetune import train
from migrations.finetune.corpus import corpus_pairs, read_chunks
from migrations.finetune.pairs import Pair
from producer import commands
from tests.integration.conftest import CORPUS, REPO, cli_env, write_corpus
from workers.core.access import AccessLevel
from workers.core.errors import ConfigError, InvalidInput, QualityGateFailed
from workers.core.stores import catalog, postgres

PAIRS = REPO / "ops" / "bench" / "data" / "iwslt15-en-vi-tst2013.tsv"
DOCUMENTS = 24  # Vietnamese documents of two sentences each, from the end of the file


def iwslt() -> list[tuple[str, str]]:
    with PAIRS.open(encoding="utf-8", newline="") as file:
        return [tuple(row) for row in csv.reader(file, delimiter="\t")][1:]


def write_pairs(path: Path, pairs) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file, delimiter="\t", lineterminator="\n").writerows(pairs)
    return path


@pytest.fixture
def translated(tmp_path, make_settings, migrated_url, minilm):
    """A live MiniLM index of Vietnamese documents, English questions for them, and training
    pairs from other talks."""
    rows = iwslt()
    held, training = rows[-2 * DOCUMENTS :], rows[:160]
    docs, cases = tmp_path / "docs", []
    for number in range(DOCUMENTS):
        (english, vietnamese), (_, second) = held[2 * number], held[2 * number + 1]
        path = docs / f"talk-{number:02d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"---\naccess_level: public\n---\n{vietnamese}\n\n{second}\n", encoding="utf-8")
        cases.append({"query": english, "level": "public", "expected_document": path.name})
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(case, ensure_ascii=False) + "\n" for case in cases), encoding="utf-8")
    settings = make_settings(database_url=migrated_url, model=minilm, device="cpu")
    commands.ingest(settings, docs, None, wait=False)
    return settings, write_pairs(tmp_path / "train.tsv", training), eval_file, training


def request(**values) -> finetune.FinetuneRequest:
    return finetune.FinetuneRequest(**{"epochs": 1, "batch_size": 16, **values})


def test_finetuned_model_raises_the_live_mrr_and_one_on_mismatched_pairs_is_refused(translated, tmp_path, minilm):
    settings, pairs_file, eval_file, training = translated
    out = tmp_path / "adapted"
    record = finetune.run(
        settings, request(pairs=[pairs_file], eval_file=eval_file, out=out, epochs=2, learning_rate=1e-4)
    )
    evaluation = record["evaluation"]
    assert evaluation["method"] == "index"
    assert evaluation["before"]["corpus"] == "live index"  # the base is the live model: measured there
    assert evaluation["after"]["corpus"] == "scratch collection"
    assert evaluation["after"]["mrr"] > evaluation["before"]["mrr"] + 0.05
    saved = json.loads((out / "training.json").read_text())
    assert saved["data"]["files"][0]["sha256"] and saved["data"]["train_pairs"] == len(training)
    assert len(saved["training"]["losses"]) == saved["training"]["steps"]
    assert not (out / "checkpoints").exists() and not (out / "run.json").exists()

    report = migrate.run_reindex(settings, str(out), None, False, eval_file, True, False, 0.02)
    assert report["cutover"] and report["eval"]["green"]["mrr"] > report["eval"]["blue"]["mrr"]

    # Trained to map each question to another talk's sentence: worse than what is live, refused.
    shuffled = [pair[1] for pair in training]
    random.Random(7).shuffle(shuffled)
    wrong = write_pairs(tmp_path / "wrong.tsv", [(q, p) for (q, _), p in zip(training, shuffled, strict=True)])
    bad = tmp_path / "mismatched"
    finetune.run(settings, request(pairs=[wrong], base=str(out), out=bad, epochs=1, learning_rate=5e-4))
    with pytest.raises(QualityGateFailed):
        migrate.run_reindex(settings, str(bad), None, False, eval_file, True, False, 0.02)
    with closing(postgres.connect(settings)) as conn:
        assert catalog.live_version(conn).model == str(out)  # what was live stays live


def test_lora_adapters_merge_into_a_model_that_loads_without_peft(tmp_path, minilm):
    pairs = [Pair(q, p) for q, p in iwslt()[:24]]
    model = train.load_model(minilm, "cpu")
    options = train.TrainOptions(minilm, tmp_path / "lora", epochs=1, batch_size=8, lora=True, native_dim=384)
    train.train(model, pairs, options, "")
    probe = ["How many days of leave do I have?", "Tôi có bao nhiêu ngày nghỉ phép?"]
    adapted = model.encode(probe)
    base = train.load_model(minilm, "cpu").encode(probe)
    assert not np.allclose(adapted, base, atol=1e-4)  # the adapters changed something
    train.save(model, options.out)
    assert not (options.out / "adapter_config.json").exists()
    script = (
        "import sys, json; sys.modules['peft'] = None\n"  # importing peft fails from here on
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(options.out)!r}, device='cpu')\n"
        f"print(json.dumps(model.encode({probe!r}).tolist()))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert np.allclose(np.array(json.loads(loaded.stdout.splitlines()[-1])), adapted, atol=1e-5)


def test_ctrl_c_leaves_a_checkpoint_that_the_same_command_resumes(make_settings, migrated_url, minilm, tmp_path):
    settings = make_settings(database_url=migrated_url, device="cpu")
    pairs = write_pairs(tmp_path / "pairs.tsv", iwslt()[:80])
    out = tmp_path / "model"
    args = [sys.executable, "-m", "migrations", "finetune", "--base", minilm, "--pairs", str(pairs)]
    args += ["--out", str(out), "--batch-size", "4", "--epochs", "1", "--json"]
    process = subprocess.Popen(args, env=cli_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 180
    while not any(int(step) >= 2 for step in re.findall(r"\| (\d+)/18 ", seen)):
        assert time.monotonic() < deadline and process.poll() is None, seen[-2000:]
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, (seen + rest)[-2000:]
    assert "run it again to carry on" in rest
    assert any((out / "checkpoints").glob("checkpoint-*")) and not (out / "training.json").exists()

    resumed = subprocess.run(args, env=cli_env(settings), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads(resumed.stdout)
    assert record["training"]["resumed_from_step"] >= 2
    assert record["training"]["steps"] == 18  # 72 training pairs (8 held out) in batches of 4


def test_weak_pairs_from_the_corpus_use_only_text_at_or_below_the_level(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url)
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    with closing(postgres.connect(settings)) as conn:
        employee = read_chunks(conn, AccessLevel.employee_only)
    levels = {path: level for path, level, _ in CORPUS}
    assert {chunk.level.name for chunk in employee} == {"public", "employee_only"}
    assert all(levels[chunk.source_path] in ("public", "employee_only") for chunk in employee)
    made = corpus_pairs(employee)
    assert made, "the handbook's long documents give pairs"
    words: dict[int, set[str]] = {}
    for chunk in employee:
        words.setdefault(chunk.document_id, set()).update(re.findall(r"\w+", chunk.text))
    for pair, document_id in made:  # each pair's text is its own document's
        assert set(re.findall(r"\w+", pair.query + " " + pair.positive)) <= words[document_id]
    secret = "Blue River Freight"
    assert not any(secret in pair.query or secret in pair.positive for pair, _ in made)


def test_bad_input_is_refused_before_anything_is_written(make_settings, migrated_url, minilm, tmp_path, monkeypatch):
    settings = make_settings(database_url=migrated_url)
    good = write_pairs(tmp_path / "pairs.tsv", iwslt()[:40])
    out = tmp_path / "out"

    def refused(error=InvalidInput, **values):
        with pytest.raises(error) as caught:
            finetune.run(settings, request(**{"base": minilm, "pairs": [good], "out": out, **values}))
        assert not out.exists()
        return str(caught.value)

    assert "does not exist" in refused(pairs=[tmp_path / "nope.tsv"])
    assert "only 10 usable pairs" in refused(pairs=[write_pairs(tmp_path / "few.tsv", iwslt()[:10])])
    assert "above" in refused(dim=4096)
    assert "no training pairs" in refused(pairs=[])
    assert "no live index" in refused(base=None)
    assert "--batch-size must be 1 or more" in refused(batch_size=0)
    monkeypatch.setattr(migrations.finetune, "find_spec", lambda name: None if name == "peft" else object())
    assert "embedding-fleet[train]" in refused(ConfigError, lora=True)
    monkeypatch.undo()

    out.mkdir()
    (out / "notes.txt").write_text("someone's work")
    with pytest.raises(InvalidInput, match="exists and is not empty"):
        finetune.run(settings, request(base=minilm, pairs=[good], out=out))
    assert (out / "notes.txt").read_text() == "someone's work"

    # From the command line: one line on stderr, exit 2.
    result = subprocess.run(
        [sys.executable, "-m", "migrations", "finetune", "--base", minilm, "--pairs", str(tmp_path / "nope.tsv")],
        env=cli_env(settings),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("migrate finetune: error: pairs file")
