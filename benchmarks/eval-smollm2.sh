#!/usr/bin/env bash
# Greedy accuracy of SmolLM2-135M-Instruct with its chat template: GSM8K (first 100 problems) and MATH-500
# (first 50), as recorded in docs/benchmarks.md. Resumable: run it again to continue an interrupted run.
# Usage: benchmarks/eval-smollm2.sh [OUT_DIR] [MAX_NEW_TOKENS] [THREADS]   (data: $AHA_DATA_DIR or shared/data)
# THREADS defaults to 1: on a 2-core machine shared with other jobs, two torch threads were ~8x slower per
# decoding step than one (each parallel region waits for the thread that is descheduled); use 0 (one per
# core) on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/eval-smollm2}
max_new_tokens=${2:-512}
threads=${3:-1}
for spec in "gsm8k 100" "math500 50"; do
  set -- $spec
  .venv/bin/aha eval smollm2-135m-instruct --benchmarks "$1" --limit "$2" --k 1 --temperature 0 --prompt chat \
    --max-new-tokens "$max_new_tokens" --batch-size 16 --threads "$threads" --output "$out/$1"
done
