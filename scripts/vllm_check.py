"""One model through vLLM's greedy generation, for scripts/vllm_check.sh.

    python vllm_check.py MODEL_DIR RESULT.json

Writes {"loads": true, "text": ..., "ids": [...]} or {"loads": false, "reason": ...}, where
the reason is vLLM's own message (the innermost exception, one line). The engine runs in this
process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set by the caller) so that its exception, not
"Engine core initialization failed", reaches us.
"""
import json
import sys

PROMPT = "What is the capital of France?"
MAX_TOKENS = 32


def innermost(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def main() -> None:
    model, result = sys.argv[1], sys.argv[2]
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(model=model, dtype="bfloat16", max_model_len=512, enforce_eager=True)
        out = llm.chat(
            [[{"role": "user", "content": PROMPT}]],
            SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
        )
        o = out[0].outputs[0]
        res = {"loads": True, "text": o.text, "ids": list(o.token_ids)}
    except Exception as e:  # vLLM refused the checkpoint: keep its own words
        inner = innermost(e)
        msg = " ".join(str(inner).split()) or type(inner).__name__
        res = {"loads": False, "reason": f"{type(inner).__name__}: {msg}"[:400]}
    with open(result, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
