#!/usr/bin/env bash
# Calibration benchmark: qforge against llm-compressor 0.14.0.1 in the same run, on the same
# tokens and the same recipe. Prints a table of wall time and peak RSS with ratios; the
# calibration forward alone against transformers' BF16 forward over the same samples
# (tokens/s; scripts/bench_calib_forward.py); the agreement of both outputs and of round to
# nearest with the BF16 model (`qforge verify --reference`); and how many int8 codes the two
# tools chose alike.
#
#   [RECIPE=gptq_w8a8] [SAMPLES=64] [SEQLEN=512] [FORWARD=0] scripts/bench_calibrate.sh [WORKDIR]
#
# FORWARD=0 skips transformers' forward (minutes: torch's BF16 matmul without AVX-512 is slow).
# RECIPE: a recipe file, or a name in recipes/ or scripts/quality/ (gptq_w8a8,
# smoothquant_gptq_w8a8, awq_w4g64_asym, ...). WORKDIR defaults to ~/.cache/qforge/calib-bench.
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
name=${RECIPE:-gptq_w8a8}
mkdir -p "$work"
cd "$root"
recipe=$name
for r in "$name" "recipes/$name.yaml" "scripts/quality/$name.yaml"; do [ -f "$r" ] && recipe=$r && break; done
[ -f "$recipe" ] || { echo "RECIPE=$name: no such recipe file" >&2; exit 1; }
name=$(basename "$recipe" .yaml)
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

# wall seconds and peak RSS (MB) of a command: "label secs rss"; its stderr is kept in
# $work/label.stderr
measure() {
    local label=$1; shift
    python3 - "$label" "$work/$label.stderr" "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[3:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
open(sys.argv[2], "w").write(r.stderr)
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
    measure "qforge-$name" env QFORGE_TIMINGS=1 "$q" quantize --model "$model" --recipe "$recipe" --output "$work/qforge-$name" \
        --dataset "$ids" --no-shuffle --num-calibration-samples "$samples" --max-seq-length "$seqlen"
}

echo "load before: $(uptime)"
rows=("$(calibrate "$name" "$recipe")")
printf 'measured (label, wall s, peak RSS MB): %s\n' "${rows[@]}"
# The calibration forward alone: transformers on 1 and on all cores, then qforge's own
# measure of its forward in the run above (QFORGE_TIMINGS: layer passes less the hooks).
fwd=()
[ "${FORWARD:-1}" = 0 ] || for threads in 1 "$(nproc)"; do
    fwd+=("$("$venv/bin/python" scripts/bench_calib_forward.py "$model" "$ids" "$threads" 2>/dev/null)")
done
# (qforge's Linears and q·kᵀ use every core, through rayon; the rest of its forward one.)
fwd+=("$(sed -n 's/^calibration forward: \([0-9.]*\) s, \([0-9]*\) token-layers$/qforge-forward '"$(nproc)"' \1 \2/p' \
    "$work/qforge-$name.stderr")")
echo "load after: $(uptime)"
# Quality: each output against the BF16 model on one long answer (teacher-forced).
quality() {
    "$q" verify --model "$1" --reference "$model" --device cpu --json --min-agreement 0 \
        --prompt "Explain how a hash table works, with an example." --max-new-tokens 128 \
        --min-new-tokens 128 2>/dev/null | python3 -c 'import json,sys; a=json.load(sys.stdin)["reference"]["agreement"]; print("%.3f %.4f" % (a["top1_agreement"], a["kl_mean"]))'
}
# Round to nearest with the same weight format, for scale.
# (Group-64 integer schemes are not a qforge data-free preset: llm-compressor makes them.)
rm -rf "$work/rtn-$name"
case $name in
    *w4g64_asym*) OMP_NUM_THREADS=$(nproc) "$venv/bin/python" scripts/quality/llmc_dataless.py \
        "$model" scripts/quality/rtn_w4g64_asym.yaml "$work/rtn-$name" >/dev/null 2>&1 ;;
    *w4g64*) OMP_NUM_THREADS=$(nproc) "$venv/bin/python" scripts/quality/llmc_dataless.py \
        "$model" scripts/quality/rtn_w4g64.yaml "$work/rtn-$name" >/dev/null 2>&1 ;;
    *) "$q" quantize --model "$model" --scheme w8a8 --output "$work/rtn-$name" >/dev/null ;;
esac
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
# qforge counts the tokens of each layer pass (GPTQ runs two passes per layer: calibration,
# then propagation), transformers the tokens of each full-model forward. With GPTQ, qforge's
# calibration pass stops at down_proj's input (the propagation pass makes the outputs), so
# its tokens/s then overstates a full forward's: compare it with transformers' on a recipe
# without GPTQ.
layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$model/config.json")
printf '%s\n' "${fwd[@]}" | python3 -c '
import sys
layers, tokens = '"$layers"', '"$((samples * seqlen))"'
print("\n| calibration forward | threads | s per pass over the samples | tokens/s |")
print("|---|---:|---:|---:|")
rate = {}
for l in sys.stdin:
    f = l.split()
    if len(f) < 4:
        continue
    who, threads, secs, n = f[0], int(f[1]), float(f[2]), int(f[3])
    full = n / layers if who == "qforge-forward" else n
    rate[(who, threads)] = full / secs
    print(f"| {who} | {threads} | {tokens * secs / full:.2f} | {full / secs:.0f} |")
q = [r for (who, _), r in rate.items() if who == "qforge-forward"]
for (who, threads), r in sorted(rate.items()):
    if q and who != "qforge-forward":
        print(f"\nqforge forward / transformers on {threads} thread(s): {q[0] / r:.2f}x", end="")
print()
'
echo
echo "| output | top-1 agreement | mean KL |"
echo "|---|---:|---:|"
for d in "qforge-$name" "llmc-$name" "rtn-$name"; do
    echo "| $d | $(quality "$work/$d" | tr ' ' '|') |"
done
# int8 codes chosen alike by the two tools
python3 - "$work/qforge-$name/model.safetensors" "$work/llmc-$name/model.safetensors" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]] for k, v in h.items()
            if k != "__metadata__" and v["dtype"] == "I8"}
a, b = load(sys.argv[1]), load(sys.argv[2])
same = sum(sum(x == y for x, y in zip(a[k], b[k])) for k in a if k in b)
total = sum(len(a[k]) for k in a if k in b)
if total:
    print(f"\nint8 codes identical between qforge and llm-compressor: {same} of {total} ({100*same/total:.2f}%)")
PY
