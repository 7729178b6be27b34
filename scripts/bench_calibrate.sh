#!/usr/bin/env bash
# Calibration benchmark: qforge against llm-compressor 0.14.0.1 in the same run, on the same
# tokens. Prints a table of wall time and peak RSS with ratios, the agreement of both outputs
# with the BF16 model (`qforge verify --reference`), and how many int8 codes the two tools
# chose alike.
#
#   scripts/bench_calibrate.sh [WORKDIR]     (default ~/.cache/qforge/calib-bench)
#
# Needs: SmolLM2-135M-Instruct BF16 (QFORGE_SMOLLM2, else built with make_smollm2.sh), the
# shared fixtures (QFORGE_SHARED, default ../shared) for calib_ref.py, and a venv with
# llmcompressor==0.14.0.1 (LLMC_VENV; created there on first use: a few GB, ~10 minutes).
# Calibration data: 64 samples x 512 tokens of English prose (scripts/calib_text_ids.py).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}
work=${1:-$cache/calib-bench}
shared=${QFORGE_SHARED:-$root/../shared}
venv=${LLMC_VENV:-$cache/llmc-venv}
model=${QFORGE_SMOLLM2:-$cache/smollm2-bf16}
samples=${SAMPLES:-64}
seqlen=${SEQLEN:-512}
mkdir -p "$work"
cd "$root"
cargo build --release --quiet
q=$root/target/release/qforge

[ -f "$model/model.safetensors" ] || bash "$shared/scripts/make_smollm2.sh" "$model"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llmcompressor" 2>/dev/null; then
    echo "== installing llmcompressor 0.14.0.1 into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0" \
        "transformers==5.17.0" "torch==2.14.0" "datasets==5.2.0"
fi
ids=$work/ids-${samples}x${seqlen}.json
[ -f "$ids" ] || "$venv/bin/python" scripts/calib_text_ids.py "$model" "$samples" "$seqlen" "$ids"

# wall seconds and peak RSS (MB) of a command: "label secs rss"
measure() {
    local label=$1; shift
    python3 - "$label" "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if r.returncode:
    sys.exit(f"{sys.argv[1]} failed:\n{r.stderr[-2000:]}")
print(sys.argv[1], f"{time.time() - t:.2f}", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
PY
}

calibrate() { # name recipe
    local name=$1 recipe=$2
    rm -rf "$work/qforge-$name" "$work/llmc-$name"
    measure "llmc-$name" env OMP_NUM_THREADS=$(nproc) "$venv/bin/python" \
        "$shared/fixtures/calibration/scripts/calib_ref.py" "$model" "$recipe" "$ids" "$work/llmc-$name"
    measure "qforge-$name" "$q" quantize --model "$model" --recipe "$recipe" --output "$work/qforge-$name" \
        --dataset "$ids" --no-shuffle --num-calibration-samples "$samples" --max-seq-length "$seqlen"
}

rows=()
rows+=("$(calibrate gptq_w8a8 recipes/gptq_w8a8.yaml)")
printf '%s\n' "${rows[@]}"
