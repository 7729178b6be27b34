//! qforge: quantize Hugging Face checkpoints to compressed-tensors (byte-identical to
//! llm-compressor), and verify the result with qforge's own FP8 runtime.
//!
//! Data flows one way: `recipe` (YAML → [`recipe::QuantPlan`]) → `quantize` (per-tensor
//! transforms from `quant`, streamed through `checkpoint`) → on-disk checkpoint. The `runtime`
//! reads only that on-disk format.

pub mod bench;
pub mod calibrate;
pub mod checkpoint;
pub mod commands;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod format;
pub mod numerics;
pub mod output;
pub mod progress;
pub mod quantize;
pub mod recipe;
pub mod runtime;
pub mod serving;
pub mod synthetic;

pub use error::{Error, Result};

// Tensors are read and written as little-endian bytes, some by plain casts.
#[cfg(not(target_endian = "little"))]
compile_error!("qforge supports little-endian targets only");
