#!/usr/bin/env bash
# Faithfulness of `qforge eval` against lm-evaluation-harness on the same model and documents:
# lm_eval (--model hf, CPU, dtype=float32: qforge's CPU runtime computes in f32 from the BF16
# weights) and qforge on local JSONL files (the fixtures, or any folder in the --data-dir
# layout); compares every request's log-likelihood (target: within 1e-3 nats) and every
# document's metrics, and times both (scripts/eval_vs_lm_eval.py says how).
#
# usage: scripts/eval_vs_lm_eval.sh [MODEL_DIR] [LIMIT] [DATA_DIR] [TASKS] [-- extra options]
#   TASKS: comma-separated among arc_challenge, hellaswag, winogrande, mmlu_abstract_algebra,
#          truthfulqa_mc2, gsm8k (default arc_challenge,hellaswag)
#   extra: --num-fewshot N (both sides), --per-task (one run per task)
#   env: PYTHON (with lm_eval 0.4.x, torch, transformers; default /work/refvenv/bin/python),
#        QFORGE (default target/release/qforge), THREADS (per side, default 1)
set -euo pipefail
MODEL=${1:-/root/.cache/qforge/smollm2-bf16}
LIMIT=${2:-5}
DATA=${3:-tests/data/eval}
TASKS=${4:-arc_challenge,hellaswag}
shift $(($# < 4 ? $# : 4))
[[ ${1:-} == -- ]] && shift
exec "${PYTHON:-/work/refvenv/bin/python}" "$(dirname "$0")/eval_vs_lm_eval.py" \
    "$MODEL" "$LIMIT" "$DATA" "$TASKS" "$@"
