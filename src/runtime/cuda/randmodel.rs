//! Random models of real shapes: configs for Llama-3.2-1B / 3.1-8B / 3.1-70B, and random
//! host weights quantized to FP8 with qforge's own quantizer (for CPU-vs-CUDA comparisons).

use crate::checkpoint::DType;
use crate::quant::fp8::{quantize_fp8_channel, Fp8Rounding};
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{Dense, Layer, Linear, LinearWeight, Weights};
use crate::{Error, Result};
use rayon::prelude::*;
use serde_json::json;

/// The shapes the GPU checks use: `llama-1b`, `llama-8b`, `llama-70b`.
pub const SHAPES: &[&str] = &["llama-1b", "llama-8b", "llama-70b"];

/// An FP8_DYNAMIC Llama config of the named shape (vocab 128256, llama3 rope).
pub fn shape_config(name: &str) -> Result<ModelConfig> {
    ModelConfig::from_json(&shape_json(name)?)
}

/// The named shape without its quantization config (a BF16 model, see [`dequantized`]).
pub fn dense_shape_config(name: &str) -> Result<ModelConfig> {
    let mut v = shape_json(name)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("quantization_config");
    }
    ModelConfig::from_json(&v)
}

fn shape_json(name: &str) -> Result<serde_json::Value> {
    let (h, i, l, heads, kv, tied, factor) = match name {
        "llama-1b" => (2048, 8192, 16, 32, 8, true, 32.0),
        "llama-8b" => (4096, 14336, 32, 32, 8, false, 8.0),
        "llama-70b" => (8192, 28672, 80, 64, 8, false, 8.0),
        other => {
            return Err(Error::Runtime(format!(
                "unknown model shape {other} (known: {})",
                SHAPES.join(", ")
            )))
        }
    };
    let fp8 = |strategy: &str, dynamic: bool| json!({"type": "float", "num_bits": 8, "symmetric": true, "strategy": strategy, "dynamic": dynamic});
    Ok(json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": i,
        "num_hidden_layers": l, "num_attention_heads": heads, "num_key_value_heads": kv,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": tied,
        "rope_scaling": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "bos_token_id": 128000, "eos_token_id": 128001,
        "quantization_config": {"quant_method": "compressed-tensors", "format": "float-quantized",
            "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"],
            "weights": fp8("channel", false), "input_activations": fp8("token", true)}}}
    }))
}

/// `w` with every FP8 Linear replaced by its exact BF16 dequantization `bf16(code · scale)`:
/// the same model as a BF16 checkpoint, free of FP8 activation rounding.
pub fn dequantized(mut w: Weights) -> Weights {
    for layer in &mut w.layers {
        for lin in [
            &mut layer.q_proj,
            &mut layer.k_proj,
            &mut layer.v_proj,
            &mut layer.o_proj,
            &mut layer.gate_proj,
            &mut layer.up_proj,
            &mut layer.down_proj,
        ] {
            if lin.is_fp8() {
                lin.weight = LinearWeight::Dense(Dense::Bf16(lin.to_bf16()));
            }
        }
    }
    w
}

/// Uniform in [-a, a) from a counter (splitmix64).
fn uniform(i: u64, seed: u64, a: f32) -> f32 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
}

/// `n` BF16 values, uniform with standard deviation `std` around `mean`.
fn bf16_values(n: usize, seed: u64, mean: f32, std: f32) -> Vec<u16> {
    let a = std * 3f32.sqrt();
    (0..n)
        .into_par_iter()
        .map(|i| half::bf16::from_f32(mean + uniform(i as u64, seed, a)).to_bits())
        .collect()
}

fn fp8_linear(name: String, rows: usize, cols: usize, seed: u64) -> Result<Linear> {
    let bytes: Vec<u8> = bf16_values(rows * cols, seed, 0.0, 0.02)
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let (codes, scales) =
        quantize_fp8_channel(&name, DType::BF16, &bytes, rows, cols, Fp8Rounding::Eager)?;
    let scales = crate::quant::to_f32(DType::BF16, &scales)?;
    Ok(Linear {
        name,
        rows,
        cols,
        weight: LinearWeight::Fp8 { codes, scales },
        bias: None,
    })
}

fn norm(n: usize, seed: u64) -> Vec<f32> {
    bf16_values(n, seed, 1.0, 0.1)
        .into_iter()
        .map(|b| half::bf16::from_bits(b).to_f32())
        .collect()
}

/// Random host weights for `cfg`: BF16 N(0, 0.02)-like values quantized per channel to FP8
/// exactly as `qforge quantize` does, BF16 embeddings, norms 1 ± 0.1.
pub fn random_host_weights(cfg: &ModelConfig, seed: u64) -> Result<Weights> {
    let (h, i, qd, kvd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    let mut s = seed;
    let mut next = || {
        s += 1;
        s
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let a = format!("model.layers.{l}.self_attn");
        let m = format!("model.layers.{l}.mlp");
        layers.push(Layer {
            input_norm: norm(h, next()),
            post_attention_norm: norm(h, next()),
            q_proj: fp8_linear(format!("{a}.q_proj"), qd, h, next())?,
            k_proj: fp8_linear(format!("{a}.k_proj"), kvd, h, next())?,
            v_proj: fp8_linear(format!("{a}.v_proj"), kvd, h, next())?,
            o_proj: fp8_linear(format!("{a}.o_proj"), h, qd, next())?,
            q_norm: None,
            k_norm: None,
            gate_proj: fp8_linear(format!("{m}.gate_proj"), i, h, next())?,
            up_proj: fp8_linear(format!("{m}.up_proj"), i, h, next())?,
            down_proj: fp8_linear(format!("{m}.down_proj"), h, i, next())?,
        });
    }
    let mut dense = |name: &str| Linear {
        name: name.into(),
        rows: cfg.vocab_size,
        cols: h,
        weight: LinearWeight::Dense(Dense::Bf16(bf16_values(
            cfg.vocab_size * h,
            next(),
            0.0,
            0.02,
        ))),
        bias: None,
    };
    let embed = dense("model.embed_tokens");
    let lm_head = (!cfg.tie_word_embeddings).then(|| dense("lm_head"));
    Ok(Weights {
        embed,
        layers,
        norm: norm(h, seed ^ 0xABCD),
        lm_head,
    })
}
