#!/usr/bin/env bash
# Generate (or resume) the project's real rollout data sets in the background-friendly way:
#   nice -n 19 bash train/generate_data.sh            # default set, then the benchmark set
# Resumable: rerun after any interruption; finished problems are kept, none is duplicated.
# Needs: pip install -e ".[generate,llamacpp]" (llama-cpp-python compiles from source).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
SLOTS="${SLOTS:-32}"
THREADS="${THREADS:-2}"
clear-learn model
clear-learn rollouts clear_learn/data/problems-default.jsonl \
    -o clear_learn/data/rollouts-default.jsonl --texts runs/texts/rollouts-default.texts.jsonl \
    --slots "$SLOTS" --threads "$THREADS"
clear-learn rollouts clear_learn/data/problems-benchmark.jsonl \
    -o clear_learn/data/rollouts-benchmark.jsonl --texts runs/texts/rollouts-benchmark.texts.jsonl \
    --slots "$SLOTS" --threads "$THREADS"
