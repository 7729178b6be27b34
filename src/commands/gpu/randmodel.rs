//! The model shapes the GPU checks use (Llama-3.2-1B / 3.1-8B / 3.1-70B, from
//! [`crate::synthetic::named_shape`]) as FP8_DYNAMIC or BF16 configs; their random weights
//! come from [`crate::synthetic::weights`].

use crate::runtime::config::ModelConfig;
use crate::synthetic::named_shape;
use crate::{Error, Result};

/// The shapes the GPU checks use: `llama-1b`, `llama-8b`, `llama-70b`.
pub const SHAPES: &[&str] = &["llama-1b", "llama-8b", "llama-70b"];

/// An FP8_DYNAMIC Llama config of the named shape (vocab 128256, llama3 rope).
pub fn shape_config(name: &str) -> Result<ModelConfig> {
    check_shape(name)?;
    crate::bench::synth::synthetic_config(name)
}

/// The named shape without its quantization config (a BF16 model, see [`dequantized`]).
pub fn dense_shape_config(name: &str) -> Result<ModelConfig> {
    check_shape(name)?;
    let shape = named_shape(name).expect("checked above");
    ModelConfig::from_json(&shape.config())
}

fn check_shape(name: &str) -> Result<()> {
    match SHAPES.contains(&name) {
        true => Ok(()),
        false => Err(Error::Runtime(format!(
            "unknown model shape {name} (known: {})",
            SHAPES.join(", ")
        ))),
    }
}
