"""Dump llm-compressor 0.14's GPTQ intermediates for the Linears of one decoder layer.

    OMP_NUM_THREADS=N gptq_dump.py MODEL RECIPE IDS_JSON OUT [LAYER]

Runs llm-compressor's own oneshot (as fixtures/calibration/scripts/calib_ref.py does: file
order, no shuffle) with its GPTQ helpers wrapped, and stops once layer LAYER (default 0) is
quantized. For each Linear of that layer it writes raw little-endian arrays into OUT:

    NAME.x.bf16       the Linear's inputs as the Hessian hook saw them, samples one after another
    NAME.hsum.f32     the accumulated `Σ 2·XᵀX` (before `/ nsamples`)
    NAME.hinv.f32     `factorize_hessian`'s result (upper Cholesky factor of H⁻¹)
    NAME.wq.bf16      the fake-quantized weight GPTQ wrote back
    NAME.scale.bf16   the observer's scales it used (BF16 bits)

and OUT/meta.json (shapes, thread count). torch's thread count (OMP_NUM_THREADS) changes
MKL's summation order: use the one of the run you compare with (scripts/bench_calibrate.sh
uses $(nproc)). qforge's side: QFORGE_GPTQ_DUMP=DIR qforge quantize ... writes the same
arrays (src/calibrate/gptq/mod.rs, `debug_dump`).
"""
import json, os, sys

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
import llmcompressor.modifiers.gptq.base as gptq_base
import llmcompressor.modifiers.gptq.gptq_quantize as gptq_quantize

src, recipe, ids_path, out = sys.argv[1:5]
layer = int(sys.argv[5]) if len(sys.argv) > 5 else 0
prefix = f"model.layers.{layer}."
os.makedirs(out, exist_ok=True)
ids = json.load(open(ids_path))["input_ids"]
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
names = {m: n for n, m in model.named_modules()}
meta = {"torch_threads": torch.get_num_threads(), "modules": {}}


class Done(Exception):
    pass


def save(name, kind, t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.to(torch.float32).numpy()
    with open(os.path.join(out, f"{name}.{kind}"), "ab" if kind == "x.bf16" else "wb") as f:
        arr.tofile(f)


def short(name):
    return name[len(prefix):]


accumulate = gptq_base.accumulate_hessian


def accumulate_hessian(inp, module, hessian, num_samples):
    name = names[module]
    if name.startswith(prefix):
        save(short(name), "x.bf16", inp)
    return accumulate(inp, module, hessian, num_samples)


quantize = gptq_base.quantize_weight
factorize = gptq_quantize.factorize_hessian
current = []


def factorize_hessian(weights, hessians, percdamp, used_rtn_fallback):
    hinv = factorize(weights, hessians, percdamp, used_rtn_fallback)
    if current[-1] is not None:
        save(current[-1], "hinv.f32", hinv[0])
    return hinv


def quantize_weight(weights, hessians, scale, zero_point, global_scale, quant_args, **kw):
    name = current[-1]
    if name is None:
        return quantize(weights, hessians, scale, zero_point, global_scale, quant_args, **kw)
    save(name, "scale.bf16", scale[0])
    meta["modules"][name] = {"weight": list(weights.shape[1:])}
    q, losses, rtn = quantize(weights, hessians, scale, zero_point, global_scale, quant_args, **kw)
    save(name, "wq.bf16", q[0].to(torch.bfloat16))
    return q, losses, rtn


prepare = gptq_base.prepare_batch


def prepare_batch(batch, batch_qparams, hessians_by_module, num_samples_by_module):
    name = names[batch[0]]
    if not name.startswith(prefix):
        if int(name.split(".")[2]) < layer:
            current.append(None)
            return prepare(batch, batch_qparams, hessians_by_module, num_samples_by_module)
        raise Done()
    current.append(short(name))
    save(short(name), "hsum.f32", hessians_by_module[batch[0]])
    meta["modules"].setdefault(short(name), {})
    return prepare(batch, batch_qparams, hessians_by_module, num_samples_by_module)


for f in os.listdir(out):
    if f.endswith(".x.bf16"):
        os.remove(os.path.join(out, f))
gptq_base.accumulate_hessian = accumulate_hessian
gptq_base.quantize_weight = quantize_weight
gptq_base.prepare_batch = prepare_batch
gptq_quantize.factorize_hessian = factorize_hessian
tok = AutoTokenizer.from_pretrained(src)
try:
    oneshot(model=model, processor=tok, dataset=ds, recipe=recipe, num_calibration_samples=len(ids),
            max_seq_length=max(len(x) for x in ids), shuffle_calibration_samples=False)
except Done:
    pass
json.dump(meta, open(os.path.join(out, "meta.json"), "w"), indent=1)
print("dumped", sorted(meta["modules"]), "threads", meta["torch_threads"])
