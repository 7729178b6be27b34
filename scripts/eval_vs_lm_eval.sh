#!/usr/bin/env bash
# Faithfulness and speed of `qforge eval` against lm-evaluation-harness on the same model and
# documents: runs lm_eval (--model hf, CPU, dtype=float32: qforge's CPU runtime computes in f32
# from the BF16 weights) and qforge on hellaswag and arc_challenge from local JSONL files (the
# fixtures, or any folder in the same layout), then compares every request's log-likelihood
# (target: within 1e-3 nats), every document's acc/acc_norm, and the wall time.
#
# usage: scripts/eval_vs_lm_eval.sh [MODEL_DIR] [LIMIT] [DATA_DIR]
#   env: PYTHON (a python with lm_eval 0.4.x, torch, transformers; default /work/refvenv/bin/python)
set -euo pipefail
MODEL=${1:-/root/.cache/qforge/smollm2-bf16}
LIMIT=${2:-20}
DATA=$(realpath "${3:-tests/data/eval}")
PY=${PYTHON:-/work/refvenv/bin/python}
QFORGE=${QFORGE:-target/release/qforge}
OUT=$(mktemp -d)
LM=$("$PY" -c 'import lm_eval, os; print(os.path.dirname(lm_eval.__file__))')

# lm_eval tasks identical to arc_challenge / hellaswag under the openllm group (fewshot_split
# train, 25 and 10 shots), reading the same files.
mkdir -p "$OUT/tasks"
cp "$LM/tasks/hellaswag/utils.py" "$OUT/tasks/utils.py"
cat > "$OUT/tasks/arc_local.yaml" <<YAML
task: arc_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: $DATA/allenai/ai2_arc/ARC-Challenge/train.jsonl
    test: $DATA/allenai/ai2_arc/ARC-Challenge/test.jsonl
output_type: multiple_choice
training_split: train
fewshot_split: train
test_split: test
num_fewshot: 25
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
  - metric: acc_norm
YAML
cat > "$OUT/tasks/hellaswag_local.yaml" <<YAML
task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: $DATA/Rowan/hellaswag/default/train.jsonl
    validation: $DATA/Rowan/hellaswag/default/validation.jsonl
output_type: multiple_choice
training_split: train
validation_split: validation
fewshot_split: train
num_fewshot: 10
process_docs: !function utils.process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
  - metric: acc_norm
YAML

export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
t0=$(date +%s.%N)
"$PY" -m lm_eval --model hf --model_args "pretrained=$MODEL,dtype=float32" \
    --tasks arc_local,hellaswag_local --include_path "$OUT/tasks" --limit "$LIMIT" \
    --device cpu --batch_size 1 --log_samples --output_path "$OUT/lm_eval" > "$OUT/lm_eval.log" 2>&1
t1=$(date +%s.%N)
"$QFORGE" eval --model "$MODEL" --tasks arc_challenge,hellaswag --limit "$LIMIT" \
    --data-dir "$DATA" --device cpu --log-samples --json > "$OUT/qforge.json"
t2=$(date +%s.%N)

"$PY" - "$OUT" "$t0" "$t1" "$t2" <<'PY'
import json, glob, sys
out, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:])
q = json.load(open(f"{out}/qforge.json"))["model"]
qt = {t["task"]: t for t in q["tasks"]}
worst, n_req, n_doc, doc_diff = 0.0, 0, 0, 0
for ours, theirs in [("arc_challenge", "arc_local"), ("hellaswag", "hellaswag_local")]:
    f = sorted(glob.glob(f"{out}/lm_eval/**/samples_{theirs}_*.jsonl", recursive=True))[-1]
    samples = sorted((json.loads(l) for l in open(f)), key=lambda s: s["doc_id"])
    for s, d in zip(samples, qt[ours]["docs"]):
        for (ll, g), (qll, qg) in zip([r[0] for r in s["resps"]], d["loglikelihoods"]):
            worst = max(worst, abs(float(ll) - qll)); n_req += 1
        n_doc += 1
        mine = dict(zip(["acc", "acc_norm"], d["metrics"]))
        if any(float(s[m]) != mine[m] for m in ("acc", "acc_norm")):
            doc_diff += 1
print(f"requests compared: {n_req}, max |Δ log-likelihood| = {worst:.2e} nats")
print(f"documents compared: {n_doc}, acc/acc_norm differing: {doc_diff}")
print(f"lm_eval (hf, float32, CPU): {t1 - t0:.1f} s; qforge: {t2 - t1:.1f} s; speed-up {(t1 - t0) / (t2 - t1):.2f}x")
sys.exit(0 if worst <= 1e-3 and doc_diff == 0 else 1)
PY
