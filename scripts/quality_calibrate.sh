#!/usr/bin/env bash
# Quality of qforge's calibrated recipes on SmolLM2-135M-Instruct against round to nearest of
# the same weight format: every output is compared with the BF16 model on held-out English text
# (`qforge eval --perplexity ... --reference`: top-1 agreement and KL over every token) and on
# one long answer (`qforge verify --reference`). Prints a markdown table.
#
#   scripts/quality_calibrate.sh [WORKDIR]     (default ~/.cache/qforge/calib-quality)
#   env: SAMPLES (64) SEQLEN (512) HELD_TOKENS (2048) CONTEXT (512) ROWS (all rows)
#
# Calibration data: SAMPLES x SEQLEN tokens of CPython's documentation
# (scripts/calib_text_ids.py); the held-out text is 2048 tokens of the same documentation taken
# after the calibration windows (never seen by calibration). Round to nearest of int4 group 64
# is not a preset, so that row is made by llm-compressor 0.14 itself (data-free, LLMC_PY, by
# default /work/refvenv/bin/python or the bench venv) — the same config with no data.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}
work=${1:-$cache/calib-quality}
shared=${QFORGE_SHARED:-$root/../shared}
model=${QFORGE_SMOLLM2:-$cache/smollm2-bf16}
samples=${SAMPLES:-64}
seqlen=${SEQLEN:-512}
held_tokens=${HELD_TOKENS:-2048}
context=${CONTEXT:-512}
py=${LLMC_PY:-$cache/llmc-venv/bin/python}
[ -x "$py" ] || py=/work/refvenv/bin/python
mkdir -p "$work"
cd "$root"
cargo build --release --quiet
q=$root/target/release/qforge
[ -f "$model/model.safetensors" ] || bash "$shared/scripts/make_smollm2.sh" "$model"

ids=$work/ids-${samples}x${seqlen}.json
[ -f "$ids" ] || "$py" scripts/calib_text_ids.py "$model" "$samples" "$seqlen" "$ids"
held=$work/held-${held_tokens}.txt
[ -f "$held" ] || "$py" - "$model" "$((samples * seqlen))" "$held_tokens" "$held" <<'PY'
import sys
from pydoc_data.topics import topics
from tokenizers import Tokenizer
model, start, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tok = Tokenizer.from_file(f"{model}/tokenizer.json")
ids = tok.encode("\n\n".join(topics[k] for k in sorted(topics)), add_special_tokens=False).ids
open(out, "w").write(tok.decode(ids[start:start + n]))
PY

# name, how it is made: "scheme:S" | "qforge:RECIPE" (calibrated) | "llmc:RECIPE" (data-free)
all_rows=(
    "rtn_w8a8 scheme:w8a8"
    "gptq_w8a8 qforge:recipes/gptq_w8a8.yaml"
    "smoothquant_gptq_w8a8 qforge:scripts/quality/smoothquant_gptq_w8a8.yaml"
    "rtn_w4g64 llmc:scripts/quality/rtn_w4g64.yaml"
    "gptq_w4g64 qforge:scripts/quality/gptq_w4g64.yaml"
    "rtn_w4g64_asym llmc:scripts/quality/rtn_w4g64_asym.yaml"
    "awq_w4g64_asym qforge:scripts/quality/awq_w4g64_asym.yaml"
)
make_output() { # name how -> prints seconds, or "-" when qforge refuses the recipe
    local name=$1 how=$2 out=$work/$1 t0=$SECONDS
    rm -rf "$out"
    case $how in
    scheme:*) "$q" quantize --model "$model" --scheme "${how#scheme:}" --output "$out" >/dev/null 2>&1 ;;
    llmc:*) OMP_NUM_THREADS=$(nproc) "$py" scripts/quality/llmc_dataless.py "$model" "${how#llmc:}" "$out" >/dev/null 2>&1 ;;
    qforge:*) "$q" quantize --model "$model" --recipe "${how#qforge:}" --output "$out" --dataset "$ids" \
        --no-shuffle --num-calibration-samples "$samples" --max-seq-length "$seqlen" >"$work/$name.log" 2>&1 ||
        { echo "$name: $(tail -1 "$work/$name.log")" >&2; echo "-"; return; } ;;
    esac
    echo $((SECONDS - t0))
}
held_stats() { # dir -> "top1 kl_mean kl_p99 word_ppl"
    "$q" eval --model "$1" --reference "$model" --perplexity "$held" --context "$context" --json 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin); k=r["kl"]; print("%.4f %.5f %.4f %.2f" % (k["top1_agreement"], k["mean"], k["p99"], r["model"]["word_perplexity"]))'
}
answer_stats() { # dir -> "top1 kl_mean" on one 128-token answer, teacher-forced
    "$q" verify --model "$1" --reference "$model" --device cpu --json --min-agreement 0 \
        --prompt "Explain how a hash table works, with an example." --max-new-tokens 128 \
        --min-new-tokens 128 2>/dev/null |
        python3 -c 'import json,sys; a=json.load(sys.stdin)["reference"]["agreement"]; print("%.3f %.4f" % (a["top1_agreement"], a["kl_mean"]))'
}

ref_ppl=$("$q" eval --model "$model" --perplexity "$held" --context "$context" --json 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["model"]["word_perplexity"])')
echo "SmolLM2-135M-Instruct, calibration $samples x $seqlen tokens, held-out $held_tokens tokens (context $context), $(nproc) cores; BF16 word perplexity $ref_ppl"
echo
echo "| output | made by | seconds | held-out top-1 | held-out mean KL | KL p99 | word ppl | answer top-1 | answer mean KL |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for row in "${all_rows[@]}"; do
    set -- $row
    [ -z "${ROWS:-}" ] || [[ " $ROWS " == *" $1 "* ]] || continue
    secs=$(make_output "$1" "$2")
    if [ "$secs" = "-" ]; then echo "| $1 | ${2%%:*} | refused | | | | | | |"; continue; fi
    read -r top1 kl p99 ppl <<<"$(held_stats "$work/$1")"
    read -r atop1 akl <<<"$(answer_stats "$work/$1")"
    echo "| $1 | ${2%%:*} | $secs | $top1 | $kl | $p99 | $ppl | $atop1 | $akl |"
done
