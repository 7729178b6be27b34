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

rows=("$(calibrate gptq_w8a8 recipes/gptq_w8a8.yaml)")
# Quality: each output against the BF16 model on one long answer (teacher-forced).
quality() {
    "$q" verify --model "$1" --reference "$model" --device cpu --json --min-agreement 0 \
        --prompt "Explain how a hash table works, with an example." --max-new-tokens 128 \
        --min-new-tokens 128 2>/dev/null | python3 -c 'import json,sys; a=json.load(sys.stdin)["reference"]["agreement"]; print("%.3f %.4f" % (a["top1_agreement"], a["kl_mean"]))'
}
rm -rf "$work/rtn-w8a8"
"$q" quantize --model "$model" --scheme w8a8 --output "$work/rtn-w8a8" >/dev/null
printf '%s\n' "${rows[@]}" | python3 -c '
import sys
r = {l.split()[0]: (float(l.split()[1]), int(l.split()[2])) for l in sys.stdin if l.strip()}
print(f"{len(r) // 2} recipe(s), '"$samples"' samples x '"$seqlen"' tokens, '"$(nproc)"' cores\n")
print("| recipe | llm-compressor s | qforge s | speed-up | llm-compressor RSS MB | qforge RSS MB | RSS ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for k in sorted(x[5:] for x in r if x.startswith("llmc-")):
    (ls, lm), (qs, qm) = r["llmc-" + k], r["qforge-" + k]
    print(f"| {k} | {ls:.1f} | {qs:.1f} | {ls / qs:.1f}x | {lm} | {qm} | {qm / lm:.2f} |")
' 
echo
echo "| output | top-1 agreement | mean KL |"
echo "|---|---:|---:|"
for d in qforge-gptq_w8a8 llmc-gptq_w8a8 rtn-w8a8; do
    echo "| $d | $(quality "$work/$d" | tr ' ' '|') |"
done
# int8 codes chosen alike by the two tools
python3 - "$work/qforge-gptq_w8a8/model.safetensors" "$work/llmc-gptq_w8a8/model.safetensors" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in h.items()
            if k != "__metadata__" and v["dtype"] == "I8"}
a, b = load(sys.argv[1]), load(sys.argv[2])
same = sum(sum(x == y for x, y in zip(a[k], b[k])) for k in a if k in b)
total = sum(len(a[k]) for k in a if k in b)
print(f"\nint8 codes identical between qforge and llm-compressor: {same} of {total} ({100*same/max(total,1):.2f}%)")
PY
