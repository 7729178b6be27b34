//! Random models of real shapes: configs for Llama-3.2-1B / 3.1-8B / 3.1-70B, and random
//! host weights quantized to FP8 with qforge's own quantizer (for CPU-vs-CUDA comparisons).

use crate::checkpoint::DType;
use crate::numerics::fp8::{quantize_fp8_channel, Fp8Rounding};
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{Dense, Layer, Linear, LinearWeight, Weights};
use crate::synthetic::named_shape;
use crate::{Error, Result};
use rayon::prelude::*;

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
    let scales = crate::numerics::to_f32(DType::BF16, &scales)?;
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
