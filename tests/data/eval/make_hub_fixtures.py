"""Writes the eval fixtures as the Hub serves them (parquet, written by pyarrow as `datasets`'
push_to_hub writes them) under hub/<repo id>/, for the mock-Hub tests of `qforge eval`
without --data-dir: allenai/ai2_arc with a dataset card whose `configs:` name each config's
files (ARC-Challenge/{split}-00000-of-00001.parquet), Rowan/hellaswag in the default
`data/{split}-00000-of-00001.parquet` layout. Same documents as the JSONL files beside them.
Run with a python that has pyarrow (e.g. /work/refvenv/bin/python)."""
import json, os
import pyarrow as pa, pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))

def rows(path):
    with open(os.path.join(HERE, path)) as f:
        return [json.loads(l) for l in f if l.strip()]

def write(repo, name, docs):
    p = os.path.join(HERE, "hub", repo, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(docs), p)

ARC_CARD = """---
configs:
- config_name: ARC-Challenge
  data_files:
  - split: train
    path: ARC-Challenge/train-*
  - split: test
    path: ARC-Challenge/test-*
- config_name: ARC-Easy
  data_files:
  - split: test
    path: ARC-Easy/test-*
---
# ai2_arc (test fixture)
"""

for split in ["train", "test"]:
    write("allenai/ai2_arc", f"ARC-Challenge/{split}-00000-of-00001.parquet",
          rows(f"allenai/ai2_arc/ARC-Challenge/{split}.jsonl"))
write("allenai/ai2_arc", "ARC-Easy/test-00000-of-00001.parquet",
      rows("allenai/ai2_arc/ARC-Challenge/test.jsonl")[:2])
with open(os.path.join(HERE, "hub/allenai/ai2_arc/README.md"), "w") as f:
    f.write(ARC_CARD)
for split in ["train", "validation"]:
    write("Rowan/hellaswag", f"data/{split}-00000-of-00001.parquet",
          rows(f"Rowan/hellaswag/default/{split}.jsonl"))
with open(os.path.join(HERE, "hub/Rowan/hellaswag/README.md"), "w") as f:
    f.write("# hellaswag (test fixture)\n")
