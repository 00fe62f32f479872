"""The GPU tooling, checked on the CPU: `python -m workers check` and the GPU report's smoke run."""

import json
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO


def run(*command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_workers_check_names_torch_the_device_and_the_attention_path(qwen_tiny):
    result = run(sys.executable, "-m", "workers", "check", "--model", qwen_tiny, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["torch"] and report["device"] == "cpu" and report["dim"] == 64
    assert report["attention"]["path"] == "padded"  # auto on CPU
    assert "cpu" in report["attention"]["reason"]
    text = run(sys.executable, "-m", "workers", "check", "--model", qwen_tiny)
    assert text.returncode == 0 and "attention: padded" in text.stdout and "torch " in text.stdout


@pytest.mark.parametrize("model", ["/no/such/model", "acme/no-such-model-on-the-hub"])
def test_workers_check_refuses_a_model_that_is_not_there_in_one_line(model):
    result = run(sys.executable, "-m", "workers", "check", "--model", model)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "FLEET_MODEL" in result.stderr


def test_the_gpu_report_runs_end_to_end_on_the_cpu_with_the_tiny_stand_in(qwen_tiny, tmp_path):
    out = tmp_path / "report.json"
    result = run("bash", "ops/bench/gpu_report.sh", "--smoke", "--model", qwen_tiny, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for path in ("st_fp32", "st_bf16", "padded", "packed", "worker"):
        assert report[f"{path}_tokens_per_s"] > 0 and report[f"{path}_chunks_per_s"] > 0
    assert report["attention"]["path"] == "flex"  # packed asked for on CPU: eager FlexAttention
    assert report["batch_invariance_cosine"] >= 0.9999  # fp32 on CPU
    assert report["worker_vs_bare"] > 0 and report["worker_startup_to_first_forward_s"] >= 0
    assert "worker" in result.stdout and "batch invariance" in result.stdout
    tuned = report["finetune"]  # migrate finetune's recipe, two steps of the public pairs
    assert tuned["steps"] == 2 and tuned["steps_per_s"] > 0 and tuned["final_loss"] > 0
