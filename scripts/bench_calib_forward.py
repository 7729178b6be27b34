"""transformers' BF16 forward over calibration samples, timed, for scripts/bench_calibrate.sh.

    bench_calib_forward.py MODEL IDS_JSON THREADS

Runs the decoder stack (`model.model`: embeddings, every layer, the final norm; no lm_head,
which calibration does not run either) once per sample with eager attention, the
implementation llm-compressor forces during calibration, on THREADS torch threads. One
untimed sample first (torch's first call allocates and picks kernels). Prints one line:
`transformers-forward THREADS SECONDS TOKENS LAYERS`.
"""
import json, sys, time

import torch
from transformers import AutoModelForCausalLM

model_dir, ids_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
ids = json.load(open(ids_path))["input_ids"]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                             attn_implementation="eager")
model.eval()
with torch.inference_mode():
    model.model(input_ids=torch.tensor([ids[0]]))
    start = time.perf_counter()
    for sample in ids:
        model.model(input_ids=torch.tensor([sample]))
    seconds = time.perf_counter() - start
print("transformers-forward", threads, f"{seconds:.3f}", sum(map(len, ids)),
      model.config.num_hidden_layers)
