#!/usr/bin/env python3
"""torch._scaled_mm (FP8 E4M3, per-token x per-channel scales, bf16 out: vLLM's W8A8 product)
on DeepSeek-R1-Distill-Llama-70B's fused Linear shapes at M = 1, 16, 128, 2048, timed like
`qforge gpu gemm` (CUDA events, 20 runs after 3 warm-ups). Writes JSON records to argv[1].
"""
import json
import sys

import torch

SHAPES = {"qkv_proj": (10240, 8192), "o_proj": (8192, 8192), "gate_up_proj": (57344, 8192),
          "down_proj": (8192, 28672)}
MS = (1, 16, 128, 2048)


def timed_us(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) * 1000.0 / iters


def main():
    if not torch.cuda.is_available():
        print("gpu_torch_gemm: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    out = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "records": []}
    print(f"| shape | M | torch._scaled_mm us | TFLOP/s |\n|---|---|---|---|")
    for name, (n, k) in SHAPES.items():
        w8 = (torch.randn(n, k, device=dev) * 0.02).to(torch.float8_e4m3fn)
        sw = torch.rand(1, n, device=dev, dtype=torch.float32) * 1e-3 + 1e-4
        for m in MS:
            x8 = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
            sa = torch.rand(m, 1, device=dev, dtype=torch.float32) + 0.5
            rec = {"kind": "gemm", "shape": name, "M": m, "N": n, "K": k, "path": "torch-scaled-mm"}
            try:
                us = timed_us(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sw,
                                                       out_dtype=torch.bfloat16))
                rec.update(us=us, TFLOPs=2 * m * n * k / us / 1e6)
                print(f"| {name} | {m} | {us:.1f} | {rec['TFLOPs']:.1f} |")
            except RuntimeError as e:
                rec["error"] = str(e).splitlines()[0][:160]
                print(f"| {name} | {m} | error: {rec['error']} | |")
            out["records"].append(rec)
        del w8
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
