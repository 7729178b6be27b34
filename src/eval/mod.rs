//! `qforge eval`: lm-evaluation-harness-compatible tasks, perplexity and KL statistics of a
//! quantized model against its reference.

pub mod pyrandom;
pub mod score;
pub mod data;
pub mod tasks;
pub mod metrics;
