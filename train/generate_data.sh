#!/usr/bin/env bash
# Generate (or resume) the project's real rollout data sets in the background-friendly way:
#   nice -n 19 bash train/generate_data.sh
# Order: rounds of 48 default problems (its original 440 first, then the broad families'
# problems, interleaved) and 16 benchmark problems, until both files are done, so that both
# grow together.
# Resumable: rerun after any interruption; finished problems are kept, none is duplicated.
# Response texts go to a side file under runs/texts/ for `clear-learn regrade`; the default's
# are packed into clear_learn/data/texts/ (committed) by `python train/pack_texts.py`.
# Every problem written appends a line (run, id, tokens, seconds since the run began) to
# clear_learn/data/generation-log.jsonl, from which the data card computes the rate.
# Beside another job (one core left), run it with THREADS=1: llama.cpp's two threads on a
# shared core made 5.5 tokens/s, one thread 11.8 (2026-12-01, 32 slots, a training job beside).
# Needs: pip install -e ".[generate,llamacpp]" (llama-cpp-python compiles from source).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
SLOTS="${SLOTS:-32}"
THREADS="${THREADS:-2}"
DATA=clear_learn/data
LOG="$DATA/generation-log.jsonl"

run() {  # run NAME [extra args]: generate or resume one data set, logging every problem
    local name=$1; shift
    clear-learn rollouts "$DATA/problems-$name.jsonl" -o "$DATA/rollouts-$name.jsonl" \
        --texts "runs/texts/rollouts-$name.texts.jsonl" --slots "$SLOTS" --threads "$THREADS" \
        --log "$LOG" "$@"
}

lines() { if [ -f "$1" ]; then grep -c . "$1" || true; else echo 0; fi; }  # grep -c prints 0 (and fails) on an empty file
done_count() { echo $(( $(lines "$DATA/rollouts-default.jsonl") + $(lines "$DATA/rollouts-benchmark.jsonl") )); }

clear-learn model
while :; do
    before=$(done_count)
    run default --limit "${DEFAULT_ROUND:-48}"
    run benchmark --limit "${BENCHMARK_ROUND:-16}"
    [ "$(done_count)" -gt "$before" ] || break
done
