#!/usr/bin/env bash
# What the quantize workflow produces, for any model: quantizes MODEL with RECIPE, verifies the
# result against MODEL on PROMPT (gated at $MIN_AGREEMENT, default 0.9), and leaves in OUTDIR:
#   model/          the quantized checkpoint
#   verify.json     the verify report
#   quantize.json   the quantize summary (files, tensors, bytes, seconds) + verify report
# then checks them. Used by .github/workflows/quantize.yml and by .ci/run (bundled model).
#
#   scripts/artifacts.sh MODEL OUTDIR [RECIPE] [PROMPT]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 MODEL OUTDIR [RECIPE] [PROMPT]" >&2
    exit 1
fi
model=$1 out=$2
recipe=${3:-recipes/fp8_dynamic.yaml}
prompt=${4:-What is the capital of France?}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
q=${QFORGE:-$root/target/release/qforge}
[ -x "$q" ] || (cd "$root" && cargo build --release --locked)
rm -rf "$out"
mkdir -p "$out"
revision=()
[ -n "${REVISION:-}" ] && revision=(--revision "$REVISION")
"$q" quantize --model "$model" "${revision[@]}" --recipe "$recipe" --output "$out/model" \
    --verify "$prompt" --min-agreement "${MIN_AGREEMENT:-0.9}" --json >"$out/quantize.json"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
summary = json.load(open(os.path.join(out, "quantize.json")))
report = summary["verify"]
json.dump(report, open(os.path.join(out, "verify.json"), "w"), indent=2)
model = os.path.join(out, "model")
cfg = json.load(open(os.path.join(model, "config.json")))
q = cfg["quantization_config"]
assert q["quant_method"] == "compressed-tensors", q
shards = [f for f in os.listdir(model) if f.endswith(".safetensors")]
assert shards and set(shards) <= set(summary["files"]), shards
for f in ("recipe.yaml", "config.json"):
    assert os.path.getsize(os.path.join(model, f)) > 0, f
agreement = report["reference"]["agreement"]
assert report["reference"]["passed"], agreement
print(f"artifacts OK: {len(shards)} shard(s), {summary['quantized']} Linear modules quantized, "
      f"top-1 agreement {agreement['top1_agreement']:.3f}, KL mean {agreement['kl_mean']:.4f} -> {out}")
PY
