//! `qforge check` and the serving rules (issue #24): each vLLM rule on both sides of its
//! limit on shapes built here, the verdicts the issue names (FP8_BLOCK on SmolLM2, FP8_DYNAMIC
//! on Llama-70B), `quantize --tensor-parallel` and the command's errors.

mod cli;
mod rules;
mod verdicts;
