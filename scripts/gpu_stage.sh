#!/usr/bin/env bash
# Stages, inside the checkout, what a device call of scripts/gpu_check.sh needs besides the
# tracked files: the device tool sends only the checkout (the ../shared beside it stays
# behind), at most 64 MiB of it. Copies the fixtures the selftest reads (model weights and
# configs, the tiny models' goldens; no tokenizers, no SmolLM2) into .gpu/fixtures (about
# 30 MB; .gpu/ is added to .git/info/exclude, so git ignores it), and prints the size that
# will travel with the binary. Then, with the device tool:
#
#   cargo build --release && scripts/gpu_stage.sh
#   run(command="bash scripts/gpu_check.sh .gpu/fixtures", timeout_s=600,
#       carry=[".gpu", "target/release/qforge"])
#
#   scripts/gpu_stage.sh [FIXTURES_DIR] [STAGE_DIR]   # defaults ../shared/fixtures, .gpu
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${1:-$root/../shared/fixtures}
stage=${2:-$root/.gpu}
limit=$((64 << 20))
[ -d "$src/golden" ] || { echo "gpu_stage: no fixtures at $src" >&2; exit 2; }
rm -rf "$stage"
dst=$stage/fixtures
mkdir -p "$dst/golden" "$dst/schemes"
copy_model() { # from to: a checkpoint's config and weights
    mkdir -p "$2"
    cp "$1/config.json" "$1"/*.safetensors "$2/"
}
for m in tiny-llama3-fp8-dynamic tiny-tied-fp8-dynamic tiny-llama3-bf16 tiny-tied-bf16; do
    copy_model "$src/$m" "$dst/$m"
done
cp "$src"/golden/tiny-*.safetensors "$dst/golden/"
# The packed weight-only fixtures (src/runtime/cuda/selftest/packed.rs, SCHEMES).
for s in g128-W4A16 g128-W4A16_ASYM g128-W8A16 g128-NVFP4A16 g128-MXFP4A16 \
    unaligned-NVFP4A16 unaligned-MXFP4A16; do
    copy_model "$src/schemes/$s" "$dst/schemes/$s"
done
if [ "$stage" = "$root/.gpu" ] && [ -d "$root/.git" ]; then
    mkdir -p "$root/.git/info"
    grep -qxF '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >>"$root/.git/info/exclude"
fi
bytes() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1; }
staged=$(bytes "$stage")
tree=0
if [ -d "$root/.git" ]; then
    tree=$(cd "$root" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
fi
bin=$(bytes "${QFORGE_BIN:-$root/target/release/qforge}")
total=$((staged + tree + bin))
printf 'gpu_stage: %s staged (%d MB), tree %d MB, binary %d MB: %d MB of the 64 MiB a call sends\n' \
    "$stage" $((staged >> 20)) $((tree >> 20)) $((bin >> 20)) $((total >> 20))
if [ "$total" -gt "$limit" ]; then
    echo "gpu_stage: over the device tool's 64 MiB: stage less" >&2
    exit 1
fi
