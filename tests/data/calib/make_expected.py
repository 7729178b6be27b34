"""Expected token ids for tests/it/dataset.rs, made with llm-compressor 0.14.0.1 / transformers
5.17.0 / datasets 5.2.0 (the /work/refvenv venv) and SmolLM2's tokenizer (the shared
fixture smollm2-meta): `python make_expected.py SMOLLM2_DIR > expected.json`. For the special-token
rule, the same tokenizer with a post-processor that adds a BOS (`<|endoftext|>`, id 0) in front,
as Llama's does (`bos_tokenizer` below; tests/it/dataset builds the same folder).

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
import os, shutil, tempfile
bos_dir = tempfile.mkdtemp()
for f in os.listdir(sys.argv[1]):
    shutil.copy(os.path.join(sys.argv[1], f), bos_dir)
tj = json.load(open(os.path.join(bos_dir, "tokenizer.json")))
tj["post_processor"] = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}},
}
json.dump(tj, open(os.path.join(bos_dir, "tokenizer.json"), "w"))
llama = AutoTokenizer.from_pretrained(bos_dir)
raw = load_dataset("json", data_files="text.jsonl", split="train")
ds = get_processed_dataset(DatasetArguments(dataset=raw, max_seq_length=16), llama)
out["bos_text_16"] = [list(r) for r in ds["input_ids"]]
chat = load_dataset("json", data_files="chat.jsonl", split="train")
out["bos_chat_16"] = [
    llama(llama.apply_chat_template(m, tokenize=False), add_special_tokens=False,
          truncation=True, max_length=16)["input_ids"]
    for m in chat["messages"]
]
out["shuffled_ids_42_5"] = list(raw.shuffle(seed=42).select(range(5))["id"])
out["shuffled_ids_7_7"] = list(raw.shuffle(seed=7)["id"])
print(json.dumps(out))
