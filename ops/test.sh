#!/usr/bin/env bash
# The test command of the README (and of .ci/run): installs everything into .venv, makes sure
# the machine's Postgres and Redis answer, then runs ruff and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# The CPU build of torch first: an unpinned torch would pull a CUDA build of several GB.
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e '.[dev]'

bash ops/ensure-services.sh

ruff check .
ruff format --check .
lint-imports
# Two test processes by default (FLEET_TEST_PROCESSES; 0 runs the suite in this one process).
python -m pytest -q -n "${FLEET_TEST_PROCESSES:-2}" "$@"
