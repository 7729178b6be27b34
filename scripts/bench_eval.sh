#!/usr/bin/env bash
# Throughput of `qforge eval` against lm-evaluation-harness's HF backend in the same run: the
# same model, the same documents (--data-dir layout), the same threads, one run per task;
# prints per-task wall and CPU seconds of both and their ratios (lm_eval / qforge; the bar in
# issue #23 is >= 4x), after checking that both gave the same numbers.
# usage: scripts/bench_eval.sh [MODEL_DIR] [LIMIT] [TASKS] [DATA_DIR] [options]
#   defaults: SmolLM2, --limit 50 (issue #23), hellaswag,arc_challenge, tests/data/eval-bench
#   (real ARC-Challenge and HellaSwag validation documents: its make_bench_data.py says which)
#   env: PYTHON, QFORGE, THREADS as in scripts/eval_vs_lm_eval.sh; more options after TASKS and
#   DATA_DIR are passed on (--reuse OUT: time a new qforge against an earlier run's lm_eval)
set -euo pipefail
MODEL=${1:-/root/.cache/qforge/smollm2-bf16}
LIMIT=${2:-50}
TASKS=${3:-hellaswag,arc_challenge}
DATA=${4:-tests/data/eval-bench}
shift $(($# < 4 ? $# : 4))
exec "${PYTHON:-/work/refvenv/bin/python}" "$(dirname "$0")/eval_vs_lm_eval.py" \
    "$MODEL" "$LIMIT" "$DATA" "$TASKS" --per-task "$@"
