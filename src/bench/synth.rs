//! `--synthetic`: the config of a random model (a named shape or any config.json); its
//! weights come from [`crate::synthetic::weights`] (CPU) or are made in GPU memory (CUDA).

use crate::runtime::config::ModelConfig;
use crate::synthetic::{fp8_dynamic_quantization, named_shape, SHAPE_NAMES};
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The config of `--synthetic spec`: a named shape (`llama-1b`, `llama-8b`, `llama-70b`,
/// `tiny`) or the path of a config.json, made FP8_DYNAMIC.
pub fn synthetic_config(spec: &str) -> Result<ModelConfig> {
    let mut v = match named_shape(spec) {
        Some(shape) => shape.config(),
        None if spec.ends_with(".json") || Path::new(spec).is_file() => read_json(spec)?,
        None => {
            return Err(Error::Unsupported(format!(
                "--synthetic {spec}: not a shape ({SHAPE_NAMES}) nor a config.json file"
            )))
        }
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("quantization_config".into(), fp8_dynamic_quantization());
    }
    ModelConfig::from_json(&v).map_err(|e| match e {
        Error::Checkpoint(m) | Error::Unsupported(m) => {
            Error::Unsupported(format!("--synthetic {spec}: {m}"))
        }
        other => other,
    })
}

fn read_json(path: &str) -> Result<Value> {
    let text = crate::checkpoint::input::read_to_string(Path::new(path))
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{path}: invalid JSON: {e}")))
}

/// True when `cfg` has the seed model's shape (Llama-3.1-70B / DeepSeek-R1-Distill-Llama-70B).
pub fn is_seed_shape(cfg: &ModelConfig) -> bool {
    let Some(s) = named_shape("llama-70b") else {
        return false;
    };
    (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) == (s.hidden, s.intermediate, s.layers)
        && (cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (s.heads, s.kv_heads, s.vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_shapes_are_fp8_dynamic_quantization() {
        let c = synthetic_config("llama-70b").unwrap();
        assert!(is_seed_shape(&c));
        assert_eq!(
            (c.hidden_size, c.num_layers, c.vocab_size),
            (8192, 80, 128256)
        );
        assert!(crate::runtime::weights::is_quantized(&c, "model.layers.0.mlp.up_proj").unwrap());
        assert!(!crate::runtime::weights::is_quantized(&c, "lm_head").unwrap());
        assert!(!is_seed_shape(&synthetic_config("llama-8b").unwrap()));
        assert!(synthetic_config("llama-3b").is_err());
    }
}
