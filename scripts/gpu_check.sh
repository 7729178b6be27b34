#!/usr/bin/env bash
# The CUDA backend's GPU check: what a session with a GPU runs, in one go, in under 10 minutes
# (the sum of the stage limits, 580 s; a healthy run takes less). Stages (a)-(c) take at most
# 8 minutes; (d), the seed profiles, gets the rest.
#
#   scripts/gpu_check.sh [FIXTURES_DIR]      # default ../shared/fixtures (skipped if absent)
#
# A device call sends only the checkout (64 MiB at most): stage the fixtures with
# scripts/gpu_stage.sh and pass .gpu/fixtures (docs/gpu-results.md, "How to run").
#
# Needs only the built binary (target/release/qforge from `cargo build --release`, whose
# default features include cuda, or $QFORGE_BIN), an NVIDIA driver, NVRTC + cuBLASLt (CUDA toolkit, found under
# /usr/local/cuda*), and python3 with PyTorch for the torch._scaled_mm comparison. No Rust,
# no network. Every stage runs under its own timeout, writes its log and JSON under
# $QFORGE_GPU_CHECK_DIR (default $TMPDIR/qforge-gpu-check), and a failed stage does not stop
# the next one. The last step prints docs/gpu-results.md's section for this run (also in
# $OUT/report.md): paste it there.
#
# Stages: (0) environment, (1) `qforge gpu info` twice (cold compile, then the disk cache),
# (a) `qforge gpu selftest`: CUDA vs CPU on FP8 conversions, the W8A8 Linear goldens, the four
# tiny fixtures (residual streams, decode vs prefill) and a random Llama-3.2-1B-shaped model
# quantized on the spot, and its BF16 dequantization (logits, greedy ids), and the decode
# GEMV's time under each tuning build of gemv.cu (gemv-sweep); (b) `qforge gpu bench`: decode/prefill tokens/s
# and % of HBM roofline of random 8B- and 70B-shaped FP8 models made in GPU memory; (c)
# `qforge gpu gemm` and scripts/gpu_torch_gemm.py: FP8 GEMM paths vs torch._scaled_mm on the
# 70B shapes at M = 1, 16, 128, 2048; (d) `qforge bench`: the seed model card's eight
# single-stream latency profiles on a random 70B-shaped FP8 model in GPU memory, beside the
# card's 2xH100 figures (about 100 s at the card's speed; each profile's latency is logged as
# it ends, so a cut-off run still shows the ones before; with QFORGE_GPU_FULL_PROFILES=1 the
# 8B shape too and two profiles of a random 70B W4A16 model, 170 s more of limits: 750 s, more
# than one 600-s device call, so only where there is room; the tables are appended to
# report.md).
#
# QFORGE_GPU_CHECK_SMOKE=1 (with QFORGE_CUDA_EMULATE=1: CI does it, tests/isolated/gpu_check_script.rs)
# runs every stage on tiny shapes, without nvidia-smi and PyTorch: it checks the script and
# the report, not the GPU.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${QFORGE_BIN:-$root/target/release/qforge}
# A binary carried to another machine may arrive without its executable bit.
if [ -f "$bin" ] && [ ! -x "$bin" ]; then chmod +x "$bin" 2>/dev/null; fi
fixtures=${1:-$root/../shared/fixtures}
# Logs, JSON and the kernel cache go to a work folder; $OUT (when set: the device tool brings
# back at most 8 files from it) gets report.md and gpu-check-logs.tar.gz, the tarball renewed
# after every stage, so a run cut off by the call's limit still returns what it did.
out=${QFORGE_GPU_CHECK_DIR:-${TMPDIR:-/tmp}/qforge-gpu-check}
dest=${OUT:-$out}
mkdir -p "$out" "$dest"
export QFORGE_KERNEL_CACHE=${QFORGE_KERNEL_CACHE:-$out/kernel-cache}
rm -rf "$QFORGE_KERNEL_CACHE" # stage 1 measures a cold compile, then the cached start
# Toolkit libraries (NVRTC's builtins, cuBLASLt) on the loader path as well; the binary
# also searches these folders itself.
for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda-12*/lib64; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}

smoke=${QFORGE_GPU_CHECK_SMOKE:-0}
tiny=$root/fixtures/tiny-random-llama/config.json
failed=()
snapshot() { # the logs and JSON so far, as one file in $dest
    if [ "$dest" != "$out" ]; then
        tar czf "$dest/gpu-check-logs.tar.gz" -C "$out" --exclude=kernel-cache . 2>/dev/null
    fi
}
# QFORGE_GPU_CHECK_ONLY="selftest profiles": run only these stages (a name, or its part before
# the first '-': info, profiles, torch), and the report; for a second, shorter device call.
only=" ${QFORGE_GPU_CHECK_ONLY:-} "
wanted() {
    [ -z "${only// /}" ] || [ "$1" = report ] || [[ "$only" == *" $1 "* ]] ||
        [[ "$only" == *" ${1%%-*} "* ]]
}
step() { # name timeout_s command...
    local name=$1 t=$2
    shift 2
    if ! wanted "$name"; then
        printf '\n== %s: skipped (QFORGE_GPU_CHECK_ONLY)\n' "$name"
        return
    fi
    printf '\n== %s (%s, limit %ss)\n' "$name" "$(date +%T)" "$t"
    local start=$SECONDS
    timeout -k 5 "$t" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    printf -- '-- %s: exit %s after %ss\n' "$name" "$rc" "$((SECONDS - start))"
    [ "$rc" = 0 ] || failed+=("$name(exit $rc)")
    snapshot
}

if [ "$smoke" = 1 ]; then
    step env 10 ls -l "$bin"
else step env 10 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv;
    ls -d /usr/local/cuda* 2>/dev/null; ls -l '$bin';
    python3 -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)'"
fi
if [ ! -x "$bin" ]; then
    echo "gpu_check: $bin is missing: build it with cargo build --release" >&2
    exit 2
fi
step info-cold 40 "$bin" gpu info --json "$out/info.json"
step info-cached 15 "$bin" gpu info
fx_args=()
if [ -d "$fixtures/golden" ]; then
    fx_args=(--fixtures "$fixtures")
else
    echo "gpu_check: no fixtures at $fixtures: selftest skips the fixture stages"
fi
if [ "$smoke" = 1 ]; then
    step selftest 150 "$bin" gpu selftest "${fx_args[@]}" --steps 0 --json "$out/selftest.json"
    # The tiny model's shape with head dim 64, so that the tensor-core attention is timed too.
    wide=$out/tiny-d64.json
    python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))
c.update(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64)
json.dump(c, open(sys.argv[2], "w"))' "$tiny" "$wide"
    step bench 100 "$bin" gpu bench --shapes "$wide" --prompt 8 --decode 4 --prefill 32 \
        --json "$out/bench.json"
    step gemm 45 "$bin" gpu gemm --m 1,16,32 --div 64 --json "$out/gemm.json"
else
    step selftest 170 "$bin" gpu selftest "${fx_args[@]}" --json "$out/selftest.json"
    step bench 120 "$bin" gpu bench --json "$out/bench.json"
    step gemm 45 "$bin" gpu gemm --json "$out/gemm.json"
    step torch-gemm 45 python3 "$root/scripts/gpu_torch_gemm.py" "$out/torch_gemm.json"
fi
# JSON on stdout, the table on stderr (into the log).
shapes=(llama-70b) profiles=seed limit=125
if [ "${QFORGE_GPU_FULL_PROFILES:-0}" = 1 ]; then
    shapes=(llama-8b llama-70b)
fi
if [ "$smoke" = 1 ]; then
    shapes=("$tiny") profiles=16/4,24/2
fi
for shape in "${shapes[@]}"; do
    name=$(basename "$shape" .json)
    step "profiles-$name" "$limit" bash -c \
        "'$bin' bench --synthetic '$shape' --device cuda --profiles $profiles --json > '$out/profiles-$name.json'"
done
# Packed INT4 (W4A16) on the 70B shape, whole model (full runs; selftest's gemv-speed stage
# times its GEMV in every run).
w4_shape='' w4_profiles=256/128,1024/128
if [ "${QFORGE_GPU_FULL_PROFILES:-0}" = 1 ]; then
    w4_shape=llama-70b
fi
if [ "$smoke" = 1 ]; then
    w4_shape=$tiny w4_profiles=8/2
fi
if [ -n "$w4_shape" ]; then
    step profiles-w4a16 45 bash -c \
        "'$bin' bench --synthetic '$w4_shape' --synthetic-scheme w4a16 --device cuda \
         --profiles $w4_profiles --json > '$out/profiles-w4a16.json'"
fi
step report 10 python3 "$root/scripts/gpu_report.py" "$out"
cp "$out/report.log" "$out/report.md" 2>/dev/null
for shape in "${shapes[@]}"; do
    printf '\n**qforge bench --synthetic %s --profiles '"$profiles"'**\n\n```\n%s\n```\n' \
        "$shape" "$(cat "$out/profiles-$(basename "$shape" .json).log" 2>/dev/null)" >>"$out/report.md"
done
if [ -n "$w4_shape" ]; then
    printf '\n**qforge bench --synthetic %s --synthetic-scheme w4a16 --profiles %s**\n\n```\n%s\n```\n' \
        "$w4_shape" "$w4_profiles" "$(cat "$out/profiles-w4a16.log" 2>/dev/null)" >>"$out/report.md"
fi
[ "$dest" != "$out" ] && cp "$out/report.md" "$dest/report.md" 2>/dev/null
snapshot
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: failed stages: ${failed[*]} (logs in $out)"
    exit 1
fi
echo "gpu_check: all stages passed (logs in $out)"
