#!/usr/bin/env bash
# llm-compressor's outputs for the g128 calibration fixtures, made on THIS machine, for
# `calibrate::gptq_reproduces_llm_compressor_run_on_an_avx2_cpu` (tests/it/calibrate.rs).
#
#   scripts/calib_local_ref.sh OUT_DIR      then   QFORGE_CALIB_REF=OUT_DIR cargo test ...
# (tests/data/calibration-avx2 holds its output for the GPTQ cases, made on an AMD EPYC AVX2 CPU;
# the test reads it unless QFORGE_CALIB_REF is set).
#
# Why: torch's BF16 arithmetic depends on the CPU (on AVX2 without AVX-512 its F.linear is
# at::native's cpublas dot, with AVX-512 it is oneDNN), and the shared fixtures were made on a
# machine whose torch rounds differently from an AVX2-only one. qforge's calibration forward
# sums in the AVX2 order by default (src/calibrate/torch_dot.rs; `--reference-cpu avx512-bf16`
# for the fixtures' CPU), so on such a machine its output can be compared with
# llm-compressor's bit for bit. Needs /work/refvenv-like Python (LLMC_VENV) with
# llm-compressor 0.14.0.1 and torch 2.14.0, and a tokenizer folder (TOKENIZER, default the
# SmolLM2 model): the ids are used as they are. ~20 s per case.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: calib_local_ref.sh OUT_DIR}
shared=${QFORGE_SHARED:-$root/../shared}
venv=${LLMC_VENV:-/work/refvenv}
cal=$shared/fixtures/calibration
export TOKENIZER=${TOKENIZER:-${QFORGE_SMOLLM2:-$HOME/.cache/qforge/smollm2-bf16}}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$out"
for case in g128-gptq_w4a16 g128-gptq_w8a8 g128-gptq_w4g64_actorder_weight \
    g128-smoothquant_gptq_w8a8; do
    rm -rf "${out:?}/$case"
    "$venv/bin/python" "$cal/scripts/calib_ref.py" "$cal/../schemes/g128-bf16" \
        "$cal/$case/input-recipe.yaml" "$cal/g128-ids.json" "$out/$case" >"$out/$case.log" 2>&1
    echo "$case: $(sha256sum "$out/$case/model.safetensors" | cut -c1-16)..."
done
