#!/usr/bin/env bash
# Throughput of `qforge eval`: requests and forwarded tokens per second on the fixture
# documents (or any --data-dir folder), from the JSON it writes.
# usage: scripts/bench_eval.sh [MODEL_DIR] [LIMIT] [TASKS] [DATA_DIR]
# The comparison with lm_eval on the same documents (same numbers, wall time) is
# scripts/eval_vs_lm_eval.sh.
set -euo pipefail
MODEL=${1:-/root/.cache/qforge/smollm2-bf16}
LIMIT=${2:-20}
TASKS=${3:-arc_challenge,hellaswag}
DATA=${4:-tests/data/eval}
QFORGE=${QFORGE:-target/release/qforge}
OUT=$(mktemp)
"$QFORGE" eval --model "$MODEL" --tasks "$TASKS" --limit "$LIMIT" --data-dir "$DATA" \
    --device "${DEVICE:-cpu}" --output "$OUT" >/dev/null
python3 - "$OUT" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["model"]
s = m["seconds"]
print(f"{m['requests']} requests in {s:.1f} s: {m['requests'] / s:.2f} requests/s, "
      f"{m['tokens_forwarded'] / s:.0f} forwarded tokens/s")
PY
