"""Loads quantized outputs in transformers and compares their greedy answers with the BF16
model's (issue #21: "the outputs load in transformers ... and answer like the BF16 model").

    python transformers_check.py BF16_DIR NAME=DIR [NAME=DIR ...]

Run it with a Python that has transformers and compressed-tensors (scripts/vllm_check.sh runs
it in vLLM's CPU venv). Each model is loaded with `AutoModelForCausalLM.from_pretrained`
(transformers' compressed-tensors integration decompresses the weights on load and runs the
model in BF16 with compressed-tensors' own quantization hooks: not vLLM's kernels), then
answers each prompt greedily (chat template, MAX_NEW_TOKENS new tokens). Prints one table row per output: loads?,
how many prompts give BF16's exact ids, the first differing token position of the others, the
seconds it took and its answer to the first prompt.
Exit status 1 when an output does not load, else 0 (a different answer is reported, not a
failure: quantization may change a greedy answer).
"""
import sys
import time

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three prime numbers.",
]
MAX_NEW_TOKENS = 24


def answers(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model.eval()
    out = []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out, tok


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a + [None], b + [None])) if x != y), None)


def main():
    bf16, outputs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    ref, tok = answers(bf16)
    print(f"BF16: {tok.decode(ref[0])!r}")
    print(f"| {'output':<22} | loads? | same ids as BF16 | first difference (token) | s | answer 1 |")
    print(f"|{'-' * 24}|--------|------------------|--------------------------|---|----------|")
    bad = 0
    for name, path in outputs:
        start = time.time()
        try:
            got, qtok = answers(path)
        except Exception as e:  # transformers refused it: report its words
            bad += 1
            print(f"| {name:<22} | no     | -                | {type(e).__name__}: {' '.join(str(e).split())[:200]} | | |")
            continue
        same = sum(g == r for g, r in zip(got, ref))
        diffs = [str(first_difference(g, r)) for g, r in zip(got, ref) if g != r]
        print(f"| {name:<22} | yes    | {same}/{len(PROMPTS):<14} | {', '.join(diffs) or '-':<24} "
              f"| {time.time() - start:.0f} | {qtok.decode(got[0])!r} |")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
