//! `qforge eval`: lm-evaluation-harness-compatible tasks, perplexity and KL statistics of a
//! quantized model against its reference.

pub mod pyrandom;
