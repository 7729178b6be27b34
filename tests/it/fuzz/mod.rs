//! Mutation fuzzing (proptest, stable Rust) of every parser of outside input, seeded from the
//! fixtures: safetensors headers and data layout, config.json, recipe YAML, the shard index,
//! tokenizer and chat-template files, dataset files (JSON, text, parquet, dataset cards).
//! Each target asserts the format's promise: no panic, no hang, and either a one-line error
//! or a result the format's own rules accept.
//! `QFORGE_FUZZ_CASES=N` raises the case counts; `scripts/fuzz.sh [CASES]` runs a campaign.

mod config;
mod dataset;
mod index;
mod recipe;
mod safetensors;
mod tokenizer;
mod util;
