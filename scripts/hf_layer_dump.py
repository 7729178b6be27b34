"""Dumps transformers' BF16 hidden states of a Llama model, layer by layer, for the
calibration forward check (docs/calibration.md).

usage: hf_layer_dump.py MODEL IDS_JSON OUT.bin
OUT.bin: raw little-endian BF16 bits, [num_layers + 1, samples, seq, hidden]: the embeddings,
then each decoder layer's output (before the final norm). Each sample runs alone (batch 1),
as llm-compressor's calibration dataloader feeds them.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

model_dir, ids_path, out_path = sys.argv[1:4]
torch.set_num_threads(1)
ids = json.load(open(ids_path))["input_ids"]
# eager: the attention llm-compressor forces during calibration (use_eager_attention)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", attn_implementation="eager")
model.eval()
layers = model.model.layers
captured = [[] for _ in range(len(layers) + 1)]
model.model.embed_tokens.register_forward_hook(lambda m, a, o: captured[0].append(o))
for i, layer in enumerate(layers):
    def hook(m, a, o, i=i):
        captured[i + 1].append(o[0] if isinstance(o, tuple) else o)
    layer.register_forward_hook(hook)
with torch.no_grad():
    for x in ids:
        model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long))
out = torch.stack([torch.cat(c, 0) for c in captured], 0).to(torch.bfloat16)
out.view(torch.int16).numpy().tofile(out_path)
print("wrote", tuple(out.shape), out_path)
