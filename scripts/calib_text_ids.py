"""Calibration ids for the benchmarks: N samples of L tokens of English prose.

    calib_text_ids.py TOKENIZER_DIR N L OUT_JSON

The text is CPython's own documentation (`pydoc_data.topics`, shipped with every Python, so the
benchmark needs no download): all topics in name order, joined by blank lines, tokenized once
without special tokens with the model's tokenizer.json, and cut into N consecutive windows of L
tokens. Writes {"input_ids": [[...], ...]}, the shape `qforge quantize --dataset` and
llm-compressor (`calib_ref.py`) both read, so that the two tools see the same tokens.
"""
import json, sys
from pydoc_data.topics import topics
from tokenizers import Tokenizer

tok_dir, n, length, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = "\n\n".join(topics[k] for k in sorted(topics))
ids = Tokenizer.from_file(f"{tok_dir}/tokenizer.json").encode(text, add_special_tokens=False).ids
if len(ids) < n * length:
    sys.exit(f"only {len(ids)} tokens of text, {n * length} needed")
json.dump({"input_ids": [ids[i * length:(i + 1) * length] for i in range(n)]}, open(out, "w"))
print(f"{out}: {n} samples x {length} tokens (of {len(ids)} available)")
