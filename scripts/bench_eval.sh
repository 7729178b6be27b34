#!/usr/bin/env bash
# Throughput of `qforge eval` against lm-evaluation-harness's HF backend in the same run: the
# same model, the same documents (--data-dir layout), the same threads, one run per task;
# prints per-task wall and CPU seconds of both and their ratios (lm_eval / qforge; the bar in
# issue #23 is >= 4x), after checking that both gave the same numbers.
# usage: scripts/bench_eval.sh [MODEL_DIR] [LIMIT] [TASKS] [DATA_DIR]
#   (issue #23 asks for --limit 50; the fixtures have 20 documents per task)
#   env: PYTHON, QFORGE, THREADS as in scripts/eval_vs_lm_eval.sh
set -euo pipefail
MODEL=${1:-/root/.cache/qforge/smollm2-bf16}
LIMIT=${2:-20}
TASKS=${3:-hellaswag,arc_challenge}
DATA=${4:-tests/data/eval}
exec "${PYTHON:-/work/refvenv/bin/python}" "$(dirname "$0")/eval_vs_lm_eval.py" \
    "$MODEL" "$LIMIT" "$DATA" "$TASKS" --per-task
