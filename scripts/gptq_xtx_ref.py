"""Reference products for the GPTQ Hessian's summation order (tests/it/gptq.rs).

    OMP_NUM_THREADS=2 gptq_xtx_ref.py OUT_DIR

For a few sample lengths K, writes random BF16 activations `kK.x.bf16` (K x 64, raw
little-endian BF16 bits) and `kK.h.f32`, the Hessian llm-compressor 0.14's
`accumulate_hessian` makes of that one sample (`(√2·x)ᵀ(√2·x)` with torch's f32 matmul,
MKL sgemm), on this machine: AMD EPYC with AVX2 + FMA, torch 2.14.0. The values span a
few binades so that the summation order shows in the last bits.
"""
import math, os, sys

import torch
from llmcompressor.modifiers.gptq.helpers import accumulate_hessian

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(21)
n = 64
linear = torch.nn.Linear(n, 8, bias=False)
for k in (150, 301, 400):
    x = (torch.randn(1, k, n) * torch.rand(1, 1, n) * 4).to(torch.bfloat16)
    h, count = accumulate_hessian(x, linear, torch.zeros(n, n), torch.zeros(()))
    assert count.item() == 1
    x.view(torch.int16).numpy().tofile(f"{out}/k{k}.x.bf16")
    h.numpy().tofile(f"{out}/k{k}.h.f32")
print("torch threads", torch.get_num_threads())
