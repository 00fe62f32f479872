"""Helpers shared by the integration tests: a migrated database, a small corpus, CLI runs."""

import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.textgen import document
from workers.core.stores import postgres

REPO = Path(__file__).resolve().parents[2]

# (path, level, text): public, employee, manager and director documents, some long enough for several chunks.
CORPUS = [
    ("handbook/welcome.md", "public", "Welcome to Sao Mai. The cafeteria opens at seven every weekday morning."),
    ("handbook/leave.md", "employee_only", document("en", 30, seed=1, title="Annual leave")),
    ("handbook/nghi-phep.md", "employee_only", document("vi", 30, seed=2, title="Chính sách nghỉ phép")),
    (
        "finance/salary-bands.md",
        "manager_only",
        "Salary bands for 2027: engineers earn 40 to 95 million dong.",
    ),
    ("board/acquisition.md", "director_only", "The board plans to acquire Blue River Freight in the third quarter."),
]


def write_corpus(root: Path, corpus=CORPUS) -> Path:
    for path, level, text in corpus:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"---\naccess_level: {level}\n---\n{text}\n", encoding="utf-8")
    return root


@pytest.fixture
def migrated_url(database_url: str, make_settings) -> str:
    with closing(postgres.connect(make_settings(database_url=database_url), migrate=True)):
        pass
    return database_url


def cli_env(settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings: every one the test set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEET_")}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is not None:
            env[f"FLEET_{name.upper()}"] = str(value.get_secret_value() if isinstance(value, SecretStr) else value)
    return env


def run_cli(env: dict, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    process = subprocess.run(
        [sys.executable, "-m", args[0], *args[1:]],
        env=env,
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and process.returncode != 0:
        raise AssertionError(f"{args} exited {process.returncode}:\n{process.stderr}")
    return process


def run_json(env: dict, *args: str):
    return json.loads(run_cli(env, *args, "--json").stdout)
