#!/usr/bin/env bash
# Generate (or resume) the project's real rollout data sets in the background-friendly way:
#   nice -n 19 bash train/generate_data.sh
# Order: the embedded default up to FIRST problems (a balanced prefix: 125 gives 5-6 per
# difficulty setting), then the whole benchmark file (unseen families for the predictor's
# evaluation), then the rest of the default.
# Resumable: rerun after any interruption; finished problems are kept, none is duplicated.
# Response texts go to a side file under runs/texts/ (not committed) for `clear-learn regrade`.
# Needs: pip install -e ".[generate,llamacpp]" (llama-cpp-python compiles from source).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
SLOTS="${SLOTS:-32}"
THREADS="${THREADS:-2}"
FIRST="${FIRST:-125}"
DATA=clear_learn/data

run() {  # run NAME [extra args]: generate or resume one data set
    local name=$1; shift
    clear-learn rollouts "$DATA/problems-$name.jsonl" -o "$DATA/rollouts-$name.jsonl" \
        --texts "runs/texts/rollouts-$name.texts.jsonl" --slots "$SLOTS" --threads "$THREADS" "$@"
}

clear-learn model
have=0
[ -f "$DATA/rollouts-default.jsonl" ] && have=$(grep -c . "$DATA/rollouts-default.jsonl" || true)
if [ "$have" -lt "$FIRST" ]; then
    run default --limit $((FIRST - have))
fi
run benchmark
run default
