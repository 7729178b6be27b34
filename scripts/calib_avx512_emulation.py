"""llm-compressor's calibrated run with torch's BF16 arithmetic of an x86 CPU with AVX-512
BF16, emulated on any CPU: how qforge's `--reference-cpu avx512-bf16` order was found
(docs/calibration.md).

    calib_avx512_emulation.py SCRIPT ARGS...

runs SCRIPT (the shared fixtures' scripts/calib_ref.py MODEL RECIPE IDS_JSON OUT, or
scripts/hf_layer_dump.py MODEL IDS_JSON OUT.bin) with, replaced:
- BF16 `F.linear` and 4-D `torch.matmul` (the attention's q·kᵀ and p·v): oneDNN's
  `vdpbf16ps` order, one running f32 sum per output over k = 1, 0, 3, 2, ...
  (ORDER=index: 0, 1, 2, ...);
- the f32 softmax: SLEEF's expf, the sum in LANES lanes (default 16) halved, x · (1/Σ);
- LlamaRMSNorm's mean(x²): torch's cascade_sum with LANES-lane vectors (rows of 4k·LANES).
Everything else (GPTQ's MKL Cholesky included) stays this CPU's. Slow (Python loops over
k): for the g128 fixtures (~15 s a case), not real models.
"""
import os, runpy, sys

import numpy as np
import torch

ORDER = os.environ.get("ORDER", "pair")
LANES = int(os.environ.get("LANES", "16"))
F = torch.nn.functional
orig_linear, orig_matmul, orig_softmax = F.linear, torch.matmul, F.softmax


def k_order(k):
    if ORDER == "index":
        return range(k)
    return [i for p in range(0, k, 2) for i in (p + 1, p) if i < k]


def running_sum(a, b):
    """(..., M, K) @ (..., K, N) in BF16: one f32 running sum per output, rounded once."""
    a, b = a.float(), b.float()
    acc = torch.zeros(a.shape[:-1] + (b.shape[-1],))
    for k in k_order(a.shape[-1]):
        acc.add_(a[..., :, k:k + 1] * b[..., k:k + 1, :])  # each product is exact
    return acc.to(torch.bfloat16)


def linear(x, w, bias=None):
    if x.dtype != torch.bfloat16 or w.dtype != torch.bfloat16 or bias is not None:
        return orig_linear(x, w, bias)
    y = running_sum(x.reshape(-1, x.shape[-1]), w.t())
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def matmul(a, b, *args, **kw):
    if args or kw or a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or a.dim() != 4:
        return orig_matmul(a, b, *args, **kw)
    return running_sum(a, b)


def fma(a, b, c):
    return (a.astype(np.float64) * b + c).astype(np.float32)


def sleef_exp(t):
    """SLEEF's expf_u10 (torch's Vectorized<float>::exp), lane by lane."""
    d = t.numpy().astype(np.float32)
    q = np.rint((d * np.float32(1.4426950408889634)).astype(np.float32))
    s = fma(q, np.float32(-0.693145751953125), d)
    s = fma(q, np.float32(-1.428606765330187e-06), s)
    u = np.full_like(d, 0.00019852762)
    for c in [0.0013930436, 0.008333361, 0.041666485, 0.16666667, 0.5]:
        u = fma(u, s, np.float32(c))
    u = (np.float32(1.0) + fma((s * s).astype(np.float32), u, s)).astype(np.float32)
    qi = np.clip(q, -200, 200).astype(np.int32)
    with np.errstate(over="ignore"):
        r = (u * np.ldexp(np.float32(1), qi >> 1)).astype(np.float32)
        r = (r * np.ldexp(np.float32(1), qi - (qi >> 1))).astype(np.float32)
    r[d < -104] = 0
    r[d > 100] = np.inf
    return torch.from_numpy(r)


def softmax(x, dim=None, dtype=None, **kw):
    if dtype != torch.float32 or dim != -1:
        return orig_softmax(x, dim=dim, dtype=dtype, **kw)
    x = x.float()
    e = sleef_exp(x - x.max(-1, keepdim=True).values)
    acc = torch.zeros(e.shape[:-1] + (LANES,))
    for j in range(0, e.shape[-1], LANES):
        part = e[..., j:j + LANES]
        acc[..., :part.shape[-1]] += part
    n = LANES
    while n > 1:
        n //= 2
        acc = acc[..., :n] + acc[..., n:2 * n]
    return e * (1.0 / acc[..., 0]).unsqueeze(-1)


def cascade_sum(x2):
    vecs = x2.shape[-1] // LANES
    assert vecs * LANES == x2.shape[-1] and vecs % 4 == 0 and vecs // 4 < 16, x2.shape
    v = x2.reshape(x2.shape[:-1] + (vecs, LANES))
    acc = [torch.zeros(x2.shape[:-1] + (LANES,)) for _ in range(4)]
    for i in range(vecs // 4):
        for k in range(4):
            acc[k] = acc[k] + v[..., i * 4 + k, :]
    s = ((acc[0] + acc[1]) + acc[2]) + acc[3]
    t = torch.zeros(x2.shape[:-1])
    for lane in range(LANES):
        t = t + s[..., lane]
    return t


def rms_forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    h = hidden_states.to(torch.float32)
    variance = (cascade_sum(h.pow(2)) / h.shape[-1]).unsqueeze(-1)
    h = h * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * h.to(input_dtype)


import transformers.models.llama.modeling_llama as llama  # noqa: E402

F.linear, torch.matmul, F.softmax = linear, matmul, softmax
llama.LlamaRMSNorm.forward = rms_forward
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
