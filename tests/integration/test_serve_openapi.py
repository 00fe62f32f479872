"""The OpenAPI schema is the contract: schemathesis generates requests from it (valid ones, and
ones that break each constraint) against the running service, with a key that reads every level,
and fails on any response the schema does not allow, any 5xx, any valid request refused or any
invalid one accepted. Bounded: at most MAX_EXAMPLES cases per operation and phase, under a
deadline.
"""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_serve import served_corpus

MAX_EXAMPLES = 50
DEADLINE_S = 420
# Refusals of a request that breaks the schema: schemathesis's defaults, and 413, which the README
# gives to a text longer than FLEET_API_MAX_QUERY_CHARS or more inputs than FLEET_API_MAX_INPUTS
# (the schema states both limits: maxLength, maxItems).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = f"""
[checks.negative_data_rejection]
expected-statuses = {REJECTIONS!r}
"""


@pytest.fixture(scope="module")
def service(pg_admin, tmp_path_factory) -> Iterator[dict]:
    with served_corpus(pg_admin, tmp_path_factory.mktemp("serve_openapi")) as served:
        yield served


def test_the_service_keeps_every_promise_of_its_openapi_schema(service, tmp_path: Path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
        f"{service['url']}/openapi.json",
        *("--header", f"Authorization: Bearer {service['keys']['director_only']}"),
        *("--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--workers", "1"),
        *("--phases", "examples,coverage,fuzzing", "--request-timeout", "30"),
        *("--generation-database", "none", "--no-color"),
    ]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S, cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"schemathesis ran past {DEADLINE_S} s:\n{err.stdout}") from None
    print(run.stdout[-3000:])
    assert run.returncode == 0, f"schemathesis found failures:\n{run.stdout[-20_000:]}\n{run.stderr[-2000:]}"
