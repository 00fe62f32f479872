#!/usr/bin/env bash
# The suite on the lowest versions that pyproject.toml allows (ops/constraints-lowest.txt), in
# .venv-lowest: a floor the code does not work with is found here, not by a user. Not part of
# the README's test command (it doubles its time); run it when a floor changes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-lowest/bin/python ]; then
  python3 -m venv .venv-lowest
fi
# shellcheck disable=SC1091
. .venv-lowest/bin/activate
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -c ops/constraints-lowest.txt -e '.[dev]'
pip list --format=freeze | grep -iE "^($(grep -v '^#' ops/constraints-lowest.txt | cut -d= -f1 | paste -sd'|'))==" || true

bash ops/ensure-services.sh
python -m pytest -q "$@"
