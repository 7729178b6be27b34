"""Expected token ids for tests/it/dataset.rs, made with llm-compressor 0.14.0.1 / transformers
5.17.0 / datasets 5.2.0 (the /work/refvenv venv) and SmolLM2's tokenizer (the shared
fixture smollm2-meta): `python make_expected.py TOKENIZER_DIR > expected.json`.

- text: llm-compressor's own preprocessing (`get_processed_dataset` with the file loaded by
  `datasets`, `TextGenerationDataset.tokenize`: truncation=True, max_length).
- messages: llm-compressor's examples: `apply_chat_template(messages, tokenize=False)`, then
  `tokenizer(text, add_special_tokens=False, truncation=True, max_length=...)`.
- order: `Dataset.shuffle(seed=42)` then `select(range(n))`; and `LengthAwareSampler`.
"""
import json, sys
from datasets import load_dataset
from transformers import AutoTokenizer
from llmcompressor.args import DatasetArguments
from llmcompressor.datasets.utils import get_processed_dataset, LengthAwareSampler

tok = AutoTokenizer.from_pretrained(sys.argv[1])
out = {}
for max_len in (2048, 16):
    raw = load_dataset("json", data_files="text.jsonl", split="train")
    args = DatasetArguments(dataset=raw, max_seq_length=max_len)
    ds = get_processed_dataset(args, tok)
    out[f"text_{max_len}"] = [list(r) for r in ds["input_ids"]]
    order = list(LengthAwareSampler(ds, num_samples=4))
    out[f"text_{max_len}_length_aware_4"] = order
    chat = load_dataset("json", data_files="chat.jsonl", split="train")
    out[f"chat_{max_len}"] = [
        tok(tok.apply_chat_template(m, tokenize=False), add_special_tokens=False,
            truncation=True, max_length=max_len)["input_ids"]
        for m in chat["messages"]
    ]
raw = load_dataset("json", data_files="text.jsonl", split="train")
out["shuffled_ids_42_5"] = list(raw.shuffle(seed=42).select(range(5))["id"])
out["shuffled_ids_7_7"] = list(raw.shuffle(seed=7)["id"])
print(json.dumps(out))
