//! `--synthetic`: the config of a random model (a named shape or any config.json), and its
//! random weights on the host for the CPU backend, built directly in memory in the form the
//! CPU loader gives a checkpoint of that scheme (the CUDA backend makes its own in GPU memory).

use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{Dense, Layer, Linear, LinearWeight, Weights};
use crate::synthetic::{named_shape, SyntheticScheme, SHAPE_NAMES};
use crate::{Error, Result};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

/// The FP8_DYNAMIC `quantization_config` llm-compressor writes (every Linear but `lm_head`).
fn fp8_dynamic() -> Value {
    let fp8 = |strategy: &str, dynamic: bool| {
        json!({"type": "float", "num_bits": 8, "symmetric": true, "strategy": strategy,
               "dynamic": dynamic})
    };
    json!({"quant_method": "compressed-tensors", "format": "float-quantized",
           "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"],
           "weights": fp8("channel", false), "input_activations": fp8("token", true)}}})
}

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
        obj.insert("quantization_config".into(), fp8_dynamic());
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

/// SplitMix64 step.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const CHUNK: usize = 1 << 16;

/// Fills `out` in parallel, 8 random bytes at a time, each 64 Ki chunk from its own stream
/// (so the bytes do not depend on the thread count); `map` turns a random u64 into elements.
fn fill<T: Send>(out: &mut [T], seed: u64, map: impl Fn(u64, &mut [T]) + Sync) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = splitmix(seed ^ splitmix(c as u64));
            for part in chunk.chunks_mut(8) {
                s = splitmix(s);
                map(s, part);
            }
        });
}

/// Random E4M3 codes of magnitude below 2 (exponent field ≤ 7; never the NaN codes).
fn fp8_codes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill(&mut v, seed, |r, part| {
        for (i, b) in part.iter_mut().enumerate() {
            *b = (r >> (8 * i)) as u8 & 0xBF;
        }
    });
    v
}

/// Random BF16 values uniform in `[-a, a)`.
fn bf16_values(n: usize, seed: u64, a: f32) -> Vec<u16> {
    let mut v = vec![0u16; n];
    fill(&mut v, seed, |r, part| {
        let mut r = r;
        for (i, b) in part.iter_mut().enumerate() {
            if i == 4 {
                r = splitmix(r);
            }
            let u = ((r >> (16 * (i % 4))) & 0xFFFF) as f32 / 65536.0;
            *b = half::bf16::from_f32(a * (2.0 * u - 1.0)).to_bits();
        }
    });
    v
}

/// Random int8 codes, any value but -128.
fn int8_codes(n: usize, seed: u64) -> Vec<i8> {
    let mut v = vec![0i8; n];
    fill(&mut v, seed, |r, part| {
        for (i, b) in part.iter_mut().enumerate() {
            *b = ((r >> (8 * i)) as u8 as i8).max(-127);
        }
    });
    v
}

/// FP8_BLOCK's block: 128 × 128.
const BLOCK: usize = 128;

/// A random `[rows, cols]` weight of `scheme`, as the CPU loader holds a checkpoint's: FP8 or
/// INT8 codes with per-row scales, FP8 codes with 128 × 128 block scales (when `cols` is
/// whole blocks; the loader dequantizes other FP8_BLOCK Linears), and the BF16 values of a
/// weight-only scheme (the CPU runtime runs those dequantized). Scales keep each output near
/// the input's scale.
fn random_weight(scheme: SyntheticScheme, rows: usize, cols: usize, seed: u64) -> LinearWeight {
    let per_col = 1.0 / (cols as f32).sqrt();
    match scheme {
        SyntheticScheme::Fp8Dynamic => LinearWeight::Fp8 {
            // Codes have RMS ~0.7.
            codes: fp8_codes(rows * cols, seed),
            scales: vec![1.4 * per_col; rows],
        },
        SyntheticScheme::W8a8 => LinearWeight::Int8 {
            // Codes have RMS ~73.
            codes: int8_codes(rows * cols, seed),
            scales: vec![per_col / 73.0; rows],
        },
        SyntheticScheme::Fp8Block if cols % BLOCK == 0 => LinearWeight::Fp8Block {
            codes: fp8_codes(rows * cols, seed),
            scales: vec![1.4 * per_col; rows.div_ceil(BLOCK) * (cols / BLOCK)],
            block_rows: BLOCK,
            block_cols: BLOCK,
        },
        _ => {
            // Uniform in [-a, a) has RMS a/√3.
            let a = 3f32.sqrt() * per_col;
            LinearWeight::Dense(Dense::Bf16(bf16_values(rows * cols, seed, a)))
        }
    }
}

/// Random weights for `cfg` on the host: Linears of `scheme` ([`random_weight`]), BF16
/// embedding and `lm_head`, norms 1, zero biases.
pub fn random_cpu_weights(
    cfg: &ModelConfig,
    scheme: SyntheticScheme,
    seed: u64,
) -> Result<Weights> {
    let mut s = splitmix(seed);
    let mut next = move || {
        s = splitmix(s);
        s
    };
    let (h, i, qd, kvd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    let mut linear = |name: String, rows: usize, cols: usize, bias: bool| Linear {
        name,
        rows,
        cols,
        weight: random_weight(scheme, rows, cols, next()),
        bias: bias.then(|| vec![0.0; rows]),
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let (a, m) = (
            format!("model.layers.{l}.self_attn"),
            format!("model.layers.{l}.mlp"),
        );
        let head_norm = cfg.qk_norm.then(|| vec![1.0; cfg.head_dim]);
        layers.push(Layer {
            input_norm: vec![1.0; h],
            post_attention_norm: vec![1.0; h],
            q_proj: linear(format!("{a}.q_proj"), qd, h, cfg.qkv_bias),
            k_proj: linear(format!("{a}.k_proj"), kvd, h, cfg.qkv_bias),
            v_proj: linear(format!("{a}.v_proj"), kvd, h, cfg.qkv_bias),
            o_proj: linear(format!("{a}.o_proj"), h, qd, cfg.o_bias),
            q_norm: head_norm.clone(),
            k_norm: head_norm,
            gate_proj: linear(format!("{m}.gate_proj"), i, h, cfg.mlp_bias),
            up_proj: linear(format!("{m}.up_proj"), i, h, cfg.mlp_bias),
            down_proj: linear(format!("{m}.down_proj"), h, i, cfg.mlp_bias),
        });
    }
    let mut dense = |name: &str| Linear {
        name: name.into(),
        rows: cfg.vocab_size,
        cols: h,
        weight: LinearWeight::Dense(Dense::Bf16(bf16_values(cfg.vocab_size * h, next(), 0.05))),
        bias: None,
    };
    let embed = dense("model.embed_tokens");
    let lm_head = (!cfg.tie_word_embeddings).then(|| dense("lm_head"));
    Ok(Weights {
        embed,
        layers,
        norm: vec![1.0; h],
        lm_head,
    })
}

/// Weight bytes one decode step reads: every layer's Linears (codes + scales, or the dense
/// matrix) and the output projection; the embedding gather reads one row and is left out.
pub fn bytes_per_token(w: &Weights) -> u64 {
    let linear = |l: &Linear| -> u64 {
        let n = (l.rows * l.cols) as u64;
        match &l.weight {
            LinearWeight::Fp8 { scales, .. }
            | LinearWeight::Int8 { scales, .. }
            | LinearWeight::Fp8Block { scales, .. } => n + 4 * scales.len() as u64,
            LinearWeight::Dense(Dense::Bf16(_) | Dense::F16(_)) => 2 * n,
            LinearWeight::Dense(Dense::F32(_)) => 4 * n,
        }
    };
    let layers: u64 = w.layers.iter().flat_map(|l| l.linears()).map(linear).sum();
    layers + linear(w.lm_head())
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
    fn named_shapes_are_fp8_dynamic() {
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

    /// A small shape whose widths are whole FP8_BLOCK blocks.
    fn small() -> ModelConfig {
        let mut v = named_shape("tiny").unwrap().config();
        let o = v.as_object_mut().unwrap();
        for (k, n) in [
            ("hidden_size", 256),
            ("intermediate_size", 384),
            ("vocab_size", 300),
        ] {
            o.insert(k.into(), n.into());
        }
        o.insert("head_dim".into(), 64.into());
        o.insert("num_attention_heads".into(), 4.into());
        o.insert("num_key_value_heads".into(), 2.into());
        o.insert("quantization_config".into(), fp8_dynamic());
        ModelConfig::from_json(&v).unwrap()
    }

    /// Each scheme builds the weight form the CPU loader gives its checkpoints, and every
    /// Linear keeps a unit-RMS input near unit RMS through the CPU's own Linear code (so deep
    /// random models neither vanish nor blow up, whatever the scheme).
    #[test]
    fn every_scheme_builds_its_cpu_form_at_unit_gain() {
        use crate::runtime::cpu::linear::run_linear;
        let cfg = small();
        let x: Vec<f32> = bf16_values(2 * 256, 99, 3f32.sqrt())
            .iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect();
        for scheme in [
            SyntheticScheme::Fp8Dynamic,
            SyntheticScheme::W8a8,
            SyntheticScheme::Fp8Block,
            SyntheticScheme::W4a16,
            SyntheticScheme::Nvfp4a16,
        ] {
            let w = random_cpu_weights(&cfg, scheme, 5).unwrap();
            let up = &w.layers[1].up_proj;
            let form = match &up.weight {
                LinearWeight::Fp8 { scales, .. } => ("fp8", scales.len()),
                LinearWeight::Int8 { scales, .. } => ("int8", scales.len()),
                LinearWeight::Fp8Block { scales, .. } => ("fp8 block", scales.len()),
                LinearWeight::Dense(Dense::Bf16(v)) => ("bf16", v.len()),
                other => panic!("{scheme:?}: {other:?}"),
            };
            let want = match scheme {
                SyntheticScheme::Fp8Dynamic => ("fp8", 384),
                SyntheticScheme::W8a8 => ("int8", 384),
                SyntheticScheme::Fp8Block => ("fp8 block", 3 * 2), // ⌈384/128⌉ × 256/128
                _ => ("bf16", 384 * 256),
            };
            assert_eq!(form, want, "{scheme:?}");
            let y = run_linear(up, &x).unwrap().y;
            let rms = (y.iter().map(|v| v * v).sum::<f32>() / y.len() as f32).sqrt();
            assert!((0.6..1.6).contains(&rms), "{scheme:?}: output RMS {rms}");
        }
    }

    #[test]
    fn random_weights_have_no_nan_codes_and_count_bytes() {
        let c = synthetic_config("tiny").unwrap();
        let w = random_cpu_weights(&c, SyntheticScheme::Fp8Dynamic, 1).unwrap();
        let LinearWeight::Fp8 { codes, .. } = &w.layers[0].up_proj.weight else {
            panic!("up_proj is not FP8");
        };
        assert!(codes.iter().all(|&b| b & 0x7F != 0x7F));
        assert!(codes.iter().any(|&b| b != codes[0]), "codes are random");
        // tiny: 2 layers of (3 h·h-ish + 3 h·i) FP8 + tied 49152×48 BF16 head.
        let (h, i, kv) = (48u64, 128u64, 16u64);
        let per_layer = 2 * h * h + 2 * kv * h + 3 * h * i + 4 * (2 * h + 2 * kv + 2 * i + h);
        assert_eq!(bytes_per_token(&w), 2 * per_layer + 2 * 49152 * h);
    }
}
