//! The integrity check: every tensor the config implies, with its dtype, shape and (for
//! scales and FP8 codes) values, before anything is converted.

use super::{bad, calibrated, dequant};
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::runtime::config::ModelConfig;
use crate::Result;

/// What one expected tensor must look like.
pub(super) struct Expect {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    pub(super) kind: Kind,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    /// BF16, F16 or F32.
    Float,
    /// F8_E4M3 codes.
    Fp8,
    /// A per-output-row FP8 scale: float dtype, `[rows, 1]` or `[rows]`, finite and > 0.
    Scale,
    /// Float scales of exactly the expected shape, finite and > 0.
    Scales,
    /// Exactly this dtype (integer codes, packed words, E8M0 bytes, `weight_shape`).
    Typed(DType),
}

/// Verifies that every tensor `cfg` implies is in `ck` with the right dtype and shape, and that
/// FP8 scales are finite and > 0 and FP8 codes hold no NaN. Returns the first problem found.
///
/// This is the one check of config.json against the weights: `qforge quantize` runs it on its
/// source too (unquantized), so that it never writes a checkpoint this loader refuses.
pub fn check(ck: &Checkpoint, cfg: &ModelConfig) -> Result<()> {
    check_layer_count(ck, cfg)?;
    for e in expected(cfg)? {
        check_one(ck, &e)?;
    }
    Ok(())
}

/// `num_hidden_layers` against the layers the checkpoint holds, before the list of expected
/// tensors (a few per layer) is built: a count of 2³¹ would otherwise allocate gigabytes
/// before any tensor is looked at. Extra layers are refused too (they would be left out).
fn check_layer_count(ck: &Checkpoint, cfg: &ModelConfig) -> Result<()> {
    let n = cfg.num_layers;
    let norm = |l: usize| format!("model.layers.{l}.input_layernorm.weight");
    let problem = if n > ck.tensors().len() || ck.get(&norm(n - 1)).is_none() {
        format!("the checkpoint has no {}", norm(n - 1))
    } else if ck.get(&norm(n)).is_some() {
        format!("the checkpoint also holds {}", norm(n))
    } else {
        return Ok(());
    };
    Err(bad(format!(
        "{}: config.json num_hidden_layers = {n}, but {problem}",
        ck.dir.display()
    )))
}

/// The full list of tensors the config implies.
fn expected(cfg: &ModelConfig) -> Result<Vec<Expect>> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let float = |name: String, shape: Vec<usize>| Expect {
        name,
        shape,
        kind: Kind::Float,
    };
    let mut out = vec![
        float("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]),
        float("model.norm.weight".into(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        linear_expect(&mut out, cfg, "lm_head", cfg.vocab_size, h, false)?;
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        out.push(float(format!("{p}.input_layernorm.weight"), vec![h]));
        out.push(float(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
        ));
        let a = format!("{p}.self_attn");
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        linear_expect(&mut out, cfg, &format!("{a}.q_proj"), q, h, cfg.qkv_bias)?;
        linear_expect(&mut out, cfg, &format!("{a}.k_proj"), kv, h, cfg.qkv_bias)?;
        linear_expect(&mut out, cfg, &format!("{a}.v_proj"), kv, h, cfg.qkv_bias)?;
        linear_expect(&mut out, cfg, &format!("{a}.o_proj"), h, q, cfg.o_bias)?;
        if cfg.kv_cache_fp8 {
            out.extend(calibrated::kv_scale_expects(&a));
        }
        if cfg.qk_norm {
            out.push(float(format!("{a}.q_norm.weight"), vec![cfg.head_dim]));
            out.push(float(format!("{a}.k_norm.weight"), vec![cfg.head_dim]));
        }
        let m = format!("{p}.mlp");
        linear_expect(&mut out, cfg, &format!("{m}.gate_proj"), i, h, cfg.mlp_bias)?;
        linear_expect(&mut out, cfg, &format!("{m}.up_proj"), i, h, cfg.mlp_bias)?;
        linear_expect(&mut out, cfg, &format!("{m}.down_proj"), h, i, cfg.mlp_bias)?;
    }
    Ok(out)
}

/// The tensors of one Linear `[rows, cols]`: FP8 codes + scale when the config quantizes it,
/// else a float weight; plus the bias when present.
fn linear_expect(
    out: &mut Vec<Expect>,
    cfg: &ModelConfig,
    module: &str,
    rows: usize,
    cols: usize,
    bias: bool,
) -> Result<()> {
    match cfg.quantization.scheme_for(module)? {
        Some(scheme) => out.extend(dequant::expect(scheme, module, rows, cols)?),

        None => out.push(Expect {
            name: format!("{module}.weight"),
            shape: vec![rows, cols],
            kind: Kind::Float,
        }),
    }
    if cfg.quantization.static_input_for(module)? {
        out.push(calibrated::input_scale_expect(module));
    }
    if bias {
        out.push(Expect {
            name: format!("{module}.bias"),
            shape: vec![rows],
            kind: Kind::Float,
        });
    }
    Ok(())
}

/// Whether the config's quantization applies to the Linear `module` (compressed-tensors
/// `ignore`: exact module names, or `re:` regexes matched at the start of the name).
pub fn is_quantized(cfg: &ModelConfig, module: &str) -> Result<bool> {
    Ok(cfg.quantization.scheme_for(module)?.is_some())
}

fn check_one(ck: &Checkpoint, e: &Expect) -> Result<()> {
    let Some(t) = ck.get(&e.name) else {
        let what = match e.kind {
            Kind::Fp8 => "FP8 weight",
            Kind::Scale => "FP8 weight scale",
            Kind::Float | Kind::Scales | Kind::Typed(_) => "tensor",
        };
        return Err(bad(format!(
            "{}: {what} {} is missing (config.json implies it)",
            ck.dir.display(),
            e.name
        )));
    };
    let dtype_ok = match e.kind {
        Kind::Float | Kind::Scale | Kind::Scales => t.dtype.is_float_weight(),
        Kind::Fp8 => t.dtype == DType::F8_E4M3,
        Kind::Typed(d) => t.dtype == d,
    };
    if !dtype_ok {
        let want = match e.kind {
            Kind::Fp8 => "F8_E4M3 (config.json quantizes this Linear)".to_string(),
            Kind::Typed(d) => format!("{d} (config.json quantizes this Linear)"),
            _ => "BF16, F16 or F32".to_string(),
        };
        return Err(bad(format!(
            "{}: tensor {} is {}, expected {want}",
            ck.dir.display(),
            e.name,
            t.dtype
        )));
    }
    let shape_ok = t.shape == e.shape || (e.kind == Kind::Scale && t.shape == e.shape[..1]);
    if !shape_ok {
        return Err(bad(format!(
            "{}: tensor {} has shape {:?}, expected {:?}",
            ck.dir.display(),
            e.name,
            t.shape,
            e.shape
        )));
    }
    match e.kind {
        Kind::Scale | Kind::Scales => check_scales(ck, t),
        Kind::Fp8 => check_codes(ck, t),
        Kind::Float | Kind::Typed(_) => Ok(()),
    }
}

fn check_scales(ck: &Checkpoint, t: &TensorInfo) -> Result<()> {
    let s = crate::numerics::to_f32(t.dtype, ck.data(t))?;
    match s.iter().position(|&v| !(v.is_finite() && v > 0.0)) {
        None => Ok(()),
        Some(r) => Err(bad(format!(
            "{}: tensor {} row {r} is {}; scales must be finite and > 0",
            ck.dir.display(),
            t.name,
            s[r]
        ))),
    }
}

/// 0x7F and 0xFF are E4M3FN's NaN codes; llm-compressor never writes them.
fn check_codes(ck: &Checkpoint, t: &TensorInfo) -> Result<()> {
    match ck.data(t).iter().position(|&c| c & 0x7F == 0x7F) {
        None => Ok(()),
        Some(i) => Err(bad(format!(
            "{}: tensor {} holds a NaN code at element {i}",
            ck.dir.display(),
            t.name
        ))),
    }
}
