//! Random host weights ([`Weights`], as the runtime's loaders give them) for models built in
//! memory: `bench --synthetic` on the CPU ([`random_weights`], any scheme) and the CUDA
//! checks' CPU references ([`fp8_quantized_weights`]). One skeleton ([`build`]) lays out every
//! such model; the CUDA backend fills its own random models directly in GPU memory.

use crate::checkpoint::DType;
use crate::numerics::fp8::{quantize_fp8_channel, Fp8Rounding};
use crate::recipe::Scheme;
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{Dense, Layer, Linear, LinearWeight, Weights};
use crate::Result;
use rayon::prelude::*;

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
fn random_weight(scheme: Scheme, rows: usize, cols: usize, seed: u64) -> Result<LinearWeight> {
    let per_col = 1.0 / (cols as f32).sqrt();
    Ok(match scheme {
        Scheme::Fp8Dynamic => LinearWeight::Fp8 {
            // Codes have RMS ~0.7.
            codes: fp8_codes(rows * cols, seed),
            scales: vec![1.4 * per_col; rows],
        },
        Scheme::W8A8 => LinearWeight::Int8 {
            // Codes have RMS ~73.
            codes: int8_codes(rows * cols, seed),
            scales: vec![per_col / 73.0; rows],
        },
        Scheme::Fp8Block if cols % BLOCK == 0 => LinearWeight::Fp8Block {
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
    })
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
fn bf16_normalish(n: usize, seed: u64, mean: f32, std: f32) -> Vec<u16> {
    let a = std * 3f32.sqrt();
    (0..n)
        .into_par_iter()
        .map(|i| half::bf16::from_f32(mean + uniform(i as u64, seed, a)).to_bits())
        .collect()
}

fn fp8_quantized(name: &str, rows: usize, cols: usize, seed: u64) -> Result<LinearWeight> {
    let bytes: Vec<u8> = bf16_normalish(rows * cols, seed, 0.0, 0.02)
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let (codes, scales) =
        quantize_fp8_channel(name, DType::BF16, &bytes, rows, cols, Fp8Rounding::Eager)?;
    let scales = crate::numerics::to_f32(DType::BF16, &scales)?;
    Ok(LinearWeight::Fp8 { codes, scales })
}

fn norm_weights(n: usize, seed: u64) -> Vec<f32> {
    bf16_normalish(n, seed, 1.0, 0.1)
        .into_iter()
        .map(|b| half::bf16::from_bits(b).to_f32())
        .collect()
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

/// How [`build`] makes each part of a random model.
struct Parts<'a> {
    /// A Linear weight `[rows, cols]` named `name`, from `seed`.
    linear: &'a dyn Fn(&str, usize, usize, u64) -> Result<LinearWeight>,
    /// A norm weight of `n` values, from `seed`.
    norm: &'a dyn Fn(usize, u64) -> Vec<f32>,
    /// The BF16 bits of the `[vocab, hidden]` embedding (and untied `lm_head`), from `seed`.
    embed: &'a dyn Fn(usize, u64) -> Vec<u16>,
}

/// The one skeleton of every random host model: `cfg`'s layers with the Linears, norms,
/// embedding and (untied) `lm_head` that `parts` makes, zero biases where `cfg` has biases,
/// each part from the next seed of `seeds`.
fn build(cfg: &ModelConfig, seeds: &mut dyn FnMut() -> u64, parts: &Parts) -> Result<Weights> {
    let (h, i, qd, kvd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    let linear = |name: String, rows: usize, cols: usize, bias: bool, seed: u64| {
        Ok::<_, crate::Error>(Linear {
            weight: (parts.linear)(&name, rows, cols, seed)?,
            name,
            rows,
            cols,
            bias: bias.then(|| vec![0.0; rows]),
            input_scale: None,
        })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let (a, m) = (
            format!("model.layers.{l}.self_attn"),
            format!("model.layers.{l}.mlp"),
        );
        let head_norm = cfg.qk_norm.then(|| vec![1.0; cfg.head_dim]);
        layers.push(Layer {
            q_proj: linear(format!("{a}.q_proj"), qd, h, cfg.qkv_bias, seeds())?,
            k_proj: linear(format!("{a}.k_proj"), kvd, h, cfg.qkv_bias, seeds())?,
            v_proj: linear(format!("{a}.v_proj"), kvd, h, cfg.qkv_bias, seeds())?,
            o_proj: linear(format!("{a}.o_proj"), h, qd, cfg.o_bias, seeds())?,
            q_norm: head_norm.clone(),
            k_norm: head_norm,
            gate_proj: linear(format!("{m}.gate_proj"), i, h, cfg.mlp_bias, seeds())?,
            up_proj: linear(format!("{m}.up_proj"), i, h, cfg.mlp_bias, seeds())?,
            down_proj: linear(format!("{m}.down_proj"), h, i, cfg.mlp_bias, seeds())?,
            input_norm: (parts.norm)(h, seeds()),
            post_attention_norm: (parts.norm)(h, seeds()),
            kv_scales: None,
        });
    }
    let mut dense = |name: &str| Linear {
        name: name.into(),
        rows: cfg.vocab_size,
        cols: h,
        weight: LinearWeight::Dense(Dense::Bf16((parts.embed)(cfg.vocab_size * h, seeds()))),
        bias: None,
        input_scale: None,
    };
    let embed = dense("model.embed_tokens");
    let lm_head = (!cfg.tie_word_embeddings).then(|| dense("lm_head"));
    Ok(Weights {
        embed,
        layers,
        norm: (parts.norm)(h, seeds()),
        lm_head,
    })
}

/// Random weights for `cfg` on the host, as the CPU loader holds a checkpoint of `scheme`
/// ([`random_weight`]): BF16 embedding and `lm_head`, norms 1 (`bench --synthetic`).
pub fn random_weights(cfg: &ModelConfig, scheme: Scheme, seed: u64) -> Result<Weights> {
    let mut s = splitmix(seed);
    let parts = Parts {
        linear: &|_, rows, cols, seed| random_weight(scheme, rows, cols, seed),
        norm: &|n, _| vec![1.0; n],
        embed: &|n, seed| bf16_values(n, seed, 0.05),
    };
    build(
        cfg,
        &mut || {
            s = splitmix(s);
            s
        },
        &parts,
    )
}

/// Random FP8_DYNAMIC weights for `cfg` on the host: BF16 N(0, 0.02)-like values quantized
/// per channel exactly as `qforge quantize` does, BF16 embeddings, norms 1 ± 0.1 (the
/// CPU-vs-CUDA comparisons of `qforge gpu selftest`).
pub fn fp8_quantized_weights(cfg: &ModelConfig, seed: u64) -> Result<Weights> {
    let mut s = seed;
    let parts = Parts {
        linear: &fp8_quantized,
        norm: &norm_weights,
        embed: &|n, seed| bf16_normalish(n, seed, 0.0, 0.02),
    };
    build(
        cfg,
        &mut || {
            s += 1;
            s
        },
        &parts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{fp8_dynamic_quantization, named_shape};

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
        o.insert("quantization_config".into(), fp8_dynamic_quantization());
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
            Scheme::Fp8Dynamic,
            Scheme::W8A8,
            Scheme::Fp8Block,
            Scheme::W4A16,
            Scheme::Nvfp4A16,
        ] {
            let w = random_weights(&cfg, scheme, 5).unwrap();
            let up = &w.layers[1].up_proj;
            let form = match &up.weight {
                LinearWeight::Fp8 { scales, .. } => ("fp8", scales.len()),
                LinearWeight::Int8 { scales, .. } => ("int8", scales.len()),
                LinearWeight::Fp8Block { scales, .. } => ("fp8 block", scales.len()),
                LinearWeight::Dense(Dense::Bf16(v)) => ("bf16", v.len()),
                other => panic!("{scheme:?}: {other:?}"),
            };
            let want = match scheme {
                Scheme::Fp8Dynamic => ("fp8", 384),
                Scheme::W8A8 => ("int8", 384),
                Scheme::Fp8Block => ("fp8 block", 3 * 2), // ⌈384/128⌉ × 256/128
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
        let mut v = named_shape("tiny").unwrap().config();
        v["quantization_config"] = fp8_dynamic_quantization();
        let c = ModelConfig::from_json(&v).unwrap();
        let w = random_weights(&c, Scheme::Fp8Dynamic, 1).unwrap();
        let LinearWeight::Fp8 { codes, .. } = &w.layers[0].up_proj.weight else {
            panic!("up_proj is not FP8");
        };
        assert!(codes.iter().all(|&b| b & 0x7F != 0x7F));
        assert!(codes.iter().any(|&b| b != codes[0]), "codes are random");
        // tiny: 2 layers of (3 h·h-ish + 3 h·i) FP8 + tied 49152×48 BF16 head.
        let (h, i, kv) = (48u64, 128u64, 16u64);
        let per_layer = 2 * h * h + 2 * kv * h + 3 * h * i + 4 * (2 * h + 2 * kv + 2 * i + h);
        assert_eq!(w.bytes_per_token(), 2 * per_layer + 2 * 49152 * h);
    }
}
