"""A data-free llm-compressor 0.14 run (round to nearest), for configs qforge's data-free path
does not take (e.g. int4 group 64 through config_groups):

    llmc_dataless.py MODEL_DIR RECIPE OUT_DIR
"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot

model_dir, recipe, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
oneshot(model=model, recipe=recipe)
model.save_pretrained(out, save_compressed=True)
AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
