//! Model weights in memory, backend-neutral, loaded from a [`Checkpoint`] after an integrity
//! check.
//!
//! Memory layout choices:
//! * FP8 Linear weights stay 1 byte per weight (the E4M3 codes as stored) with one f32 scale
//!   per output row; they are never expanded.
//! * Dense (unquantized) matrices keep their checkpoint dtype: BF16 and F16 as their 16-bit
//!   patterns (half the memory of f32; widening to f32 is exact and cheap inside the matmul),
//!   F32 as f32. The embedding table is one such matrix and doubles as the tied `lm_head`.
//! * Norm weights, biases and scales are small and are widened to f32 at load.
//! * INT8 per-channel Linear weights (the W8A8 preset) likewise stay 1 byte per weight (the
//!   int8 codes) with one f32 scale per output row; they run vLLM's W8A8-INT8 path (dynamic
//!   per-token int8 activations, exact i32 accumulation; `cpu::linear`).
//! * FP8_BLOCK weights whose columns are whole blocks stay codes + block scales and run
//!   vLLM's block path (per-token-group FP8 activations; `cpu::linear`).
//! * The other quantized formats (FP8_BLOCK with a partial column block, W8A16, W4A16,
//!   W4A16_ASYM, NVFP4A16, MXFP4A16) are dequantized at load into dense matrices of the model
//!   dtype, exactly as compressed-tensors decompresses them ([`dequant`]): as much memory as
//!   the BF16 model, and they run weight-only (f32 activations).
//!
//! The integrity check ([`check`]) runs before anything is converted: every tensor the config
//! implies must be present with the right dtype and shape, scales must be finite and
//! positive, and FP8 codes must not be NaN. That covers every preset's tensors (packed
//! codes, zero points, block/group scales; [`dequant`]); the values of `weight_shape` are
//! checked when the weight is dequantized. Errors name the tensor and what is wrong.

use super::config::{ModelConfig, WeightScheme};
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::{Error, Result};

mod dequant;
pub use dequant::{e8m0, unpack_columns, unpack_rows};

/// A dense matrix `[rows, cols]` row-major, in its checkpoint dtype.
#[derive(Debug, Clone)]
pub enum Dense {
    Bf16(Vec<u16>),
    F16(Vec<u16>),
    F32(Vec<f32>),
}

/// The weight of a Linear layer, `[rows = out_features, cols = in_features]`.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Dense),
    /// compressed-tensors FP8: E4M3 codes row-major and one scale per output row.
    Fp8 {
        codes: Vec<u8>,
        scales: Vec<f32>,
    },
    /// compressed-tensors INT8 channel (W8A8): int8 codes row-major and one scale per output
    /// row; `W[r, c] = codes[r·cols + c] · scales[r]`.
    Int8 {
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
    /// compressed-tensors FP8_BLOCK with `cols` a multiple of `block_cols`: E4M3 codes
    /// row-major and one scale per `[block_rows, block_cols]` block, row-major
    /// `[⌈rows/block_rows⌉, cols/block_cols]`. Runs vLLM's W8A8 block path (activations
    /// quantized per token and group of `block_cols`).
    Fp8Block {
        codes: Vec<u8>,
        scales: Vec<f32>,
        block_rows: usize,
        block_cols: usize,
    },
}

/// One Linear layer: `y = x · Wᵀ (+ bias)`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Module name, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub weight: LinearWeight,
    pub bias: Option<Vec<f32>>,
}

impl LinearWeight {
    /// The weight value at row `r`, column `c` of a `[_, cols]` matrix (dequantized).
    pub fn value(&self, r: usize, c: usize, cols: usize) -> f32 {
        let i = r * cols + c;
        match self {
            LinearWeight::Dense(Dense::Bf16(v)) => half::bf16::from_bits(v[i]).to_f32(),
            LinearWeight::Dense(Dense::F16(v)) => half::f16::from_bits(v[i]).to_f32(),
            LinearWeight::Dense(Dense::F32(v)) => v[i],
            LinearWeight::Fp8 { codes, scales } => {
                crate::numerics::e4m3_to_f32(codes[i]) * scales[r]
            }
            LinearWeight::Int8 { codes, scales } => codes[i] as f32 * scales[r],
            LinearWeight::Fp8Block {
                codes,
                scales,
                block_rows,
                block_cols,
            } => {
                let s = scales[(r / block_rows) * (cols / block_cols) + c / block_cols];
                crate::numerics::e4m3_to_f32(codes[i]) * s
            }
        }
    }
}

impl Linear {
    /// The weight dequantized and rounded to BF16 bits, row-major (a weight-only copy).
    pub fn to_bf16(&self) -> Vec<u16> {
        use rayon::prelude::*;
        let c = self.cols;
        (0..self.rows * c)
            .into_par_iter()
            .map(|i| half::bf16::from_f32(self.weight.value(i / c, i % c, c)).to_bits())
            .collect()
    }

    /// True when the weight is FP8 (W8A8 at run time).
    pub fn is_fp8(&self) -> bool {
        matches!(self.weight, LinearWeight::Fp8 { .. })
    }

    /// True when the weight is INT8 per channel (W8A8-INT8 at run time).
    pub fn is_int8(&self) -> bool {
        matches!(self.weight, LinearWeight::Int8 { .. })
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub input_norm: Vec<f32>,
    pub post_attention_norm: Vec<f32>,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3's per-head norms (`head_dim` weights each).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Layer {
    /// The layer's Linear modules, in forward order.
    pub fn linears(&self) -> [&Linear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

/// All weights of a model.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `model.embed_tokens.weight` as a `[vocab, hidden]` dense Linear (it is the lm_head when
    /// the embeddings are tied).
    pub embed: Linear,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    /// `lm_head.weight`; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
}

impl Weights {
    /// Weight bytes one decode step reads: every layer's Linears (codes + scales, or the dense
    /// matrix) and the output projection; the embedding gather reads one row and is left out.
    pub fn bytes_per_token(&self) -> u64 {
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
        let layers: u64 = self
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .map(linear)
            .sum();
        layers + linear(self.lm_head())
    }

    /// Checks the checkpoint against the config ([`check`]), then loads every tensor.
    pub fn load(ck: &Checkpoint, cfg: &ModelConfig) -> Result<Weights> {
        check(ck, cfg)?;
        let loader = Loader { ck, cfg };
        let layers = (0..cfg.num_layers)
            .map(|i| loader.layer(i))
            .collect::<Result<Vec<_>>>()?;
        let embed = loader.dense_linear("model.embed_tokens", false)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(loader.linear("lm_head", false)?)
        };
        Ok(Weights {
            embed,
            layers,
            norm: loader.vector("model.norm.weight")?,
            lm_head,
        })
    }

    /// The output projection: `lm_head`, or the embedding when tied.
    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every Linear module by name (layers, then `lm_head` if untied).
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        let in_layers = self.layers.iter().flat_map(|l| l.linears());
        in_layers
            .chain(self.lm_head.as_ref())
            .find(|l| l.name == name)
    }
}

/// What one expected tensor must look like.
struct Expect {
    name: String,
    shape: Vec<usize>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
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

fn bad(msg: String) -> Error {
    Error::Checkpoint(msg)
}

/// One Linear module of a checked checkpoint, as [`Weights::load`] loads it: FP8 and INT8
/// channel codes as stored, other quantized formats dequantized, dense otherwise (the CUDA
/// loader streams the formats it does not upload as they are through this).
pub fn load_linear(ck: &Checkpoint, cfg: &ModelConfig, module: &str, bias: bool) -> Result<Linear> {
    Loader { ck, cfg }.linear(module, bias)
}

/// `(out_features, in_features)` of the model's Linear `module` (named as in the checkpoint).
pub fn linear_shape(c: &ModelConfig, module: &str) -> Result<(usize, usize)> {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let leaf = module.rsplit('.').next().unwrap_or(module);
    Ok(match leaf {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_proj" | "up_proj" => (i, h),
        "down_proj" => (h, i),
        "lm_head" => (c.vocab_size, h),
        _ => return Err(bad(format!("{module}: not a Linear of the model"))),
    })
}

/// Converts checked tensors into [`Weights`] parts.
struct Loader<'a> {
    ck: &'a Checkpoint,
    cfg: &'a ModelConfig,
}

impl Loader<'_> {
    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.ck.get(name).ok_or_else(|| {
            bad(format!(
                "{}: tensor {name} is missing",
                self.ck.dir.display()
            ))
        })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        crate::numerics::to_f32(t.dtype, self.ck.data(t))
    }

    fn layer(&self, i: usize) -> Result<Layer> {
        let p = format!("model.layers.{i}");
        let c = self.cfg;
        let qk_norm = |which: &str| -> Result<Option<Vec<f32>>> {
            match c.qk_norm {
                true => Ok(Some(self.vector(&format!("{p}.self_attn.{which}.weight"))?)),
                false => Ok(None),
            }
        };
        Ok(Layer {
            input_norm: self.vector(&format!("{p}.input_layernorm.weight"))?,
            post_attention_norm: self.vector(&format!("{p}.post_attention_layernorm.weight"))?,
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"), c.qkv_bias)?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"), c.qkv_bias)?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"), c.qkv_bias)?,
            o_proj: self.linear(&format!("{p}.self_attn.o_proj"), c.o_bias)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), c.mlp_bias)?,
            up_proj: self.linear(&format!("{p}.mlp.up_proj"), c.mlp_bias)?,
            down_proj: self.linear(&format!("{p}.mlp.down_proj"), c.mlp_bias)?,
        })
    }

    /// A Linear module by its config scheme (the check made sure the tensors match it): FP8
    /// and INT8 channel codes as stored, the other formats dequantized ([`dequant`]), dense
    /// otherwise.
    fn linear(&self, module: &str, bias: bool) -> Result<Linear> {
        let int8 = match self.cfg.quantization.scheme_for(module)? {
            None => return self.dense_linear(module, bias),
            Some(WeightScheme::Fp8Channel) => false,
            Some(WeightScheme::Int8Channel) => true,
            Some(WeightScheme::Fp8Block {
                block_rows,
                block_cols,
            }) if self.linear_shape(module)?.1 % block_cols == 0 => {
                return self.block_linear(module, (block_rows, block_cols), bias)
            }
            Some(other) => return self.dequantized_linear(module, other, bias),
        };
        let w = self.tensor(&format!("{module}.weight"))?;
        let scales = self.vector(&format!("{module}.weight_scale"))?;
        let bytes = self.ck.data(w);
        let weight = match int8 {
            true => LinearWeight::Int8 {
                codes: bytes.iter().map(|&b| b as i8).collect(),
                scales,
            },
            false => LinearWeight::Fp8 {
                codes: bytes.to_vec(),
                scales,
            },
        };
        Ok(Linear {
            name: module.to_string(),
            rows: w.shape[0],
            cols: w.shape[1],
            weight,
            bias: self.bias(module, bias)?,
        })
    }

    /// FP8_BLOCK codes and block scales as stored (the columns fill whole blocks; otherwise
    /// vLLM cannot group the activations and the weight is dequantized instead).
    fn block_linear(&self, module: &str, (br, bc): (usize, usize), bias: bool) -> Result<Linear> {
        let w = self.tensor(&format!("{module}.weight"))?;
        Ok(Linear {
            name: module.to_string(),
            rows: w.shape[0],
            cols: w.shape[1],
            weight: LinearWeight::Fp8Block {
                codes: self.ck.data(w).to_vec(),
                scales: self.vector(&format!("{module}.weight_scale"))?,
                block_rows: br,
                block_cols: bc,
            },
            bias: self.bias(module, bias)?,
        })
    }

    /// Rows and columns come from the config; the output dtype is the embedding's.
    fn dequantized_linear(&self, module: &str, scheme: WeightScheme, bias: bool) -> Result<Linear> {
        let (rows, cols) = self.linear_shape(module)?;
        let out = self.tensor("model.embed_tokens.weight")?.dtype;
        Ok(Linear {
            name: module.to_string(),
            rows,
            cols,
            weight: LinearWeight::Dense(dequant::dequantize(
                self.ck, scheme, module, rows, cols, out,
            )?),
            bias: self.bias(module, bias)?,
        })
    }

    /// `[out_features, in_features]` of a Linear, from the config.
    fn linear_shape(&self, module: &str) -> Result<(usize, usize)> {
        linear_shape(self.cfg, module)
    }

    fn dense_linear(&self, module: &str, bias: bool) -> Result<Linear> {
        let w = self.tensor(&format!("{module}.weight"))?;
        Ok(Linear {
            name: module.to_string(),
            rows: w.shape[0],
            cols: w.shape[1],
            weight: LinearWeight::Dense(self.dense(w)?),
            bias: self.bias(module, bias)?,
        })
    }

    fn bias(&self, module: &str, present: bool) -> Result<Option<Vec<f32>>> {
        match present {
            true => Ok(Some(self.vector(&format!("{module}.bias"))?)),
            false => Ok(None),
        }
    }

    fn dense(&self, t: &TensorInfo) -> Result<Dense> {
        let bytes = self.ck.data(t);
        let u16s = || {
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        match t.dtype {
            DType::BF16 => Ok(Dense::Bf16(u16s())),
            DType::F16 => Ok(Dense::F16(u16s())),
            DType::F32 => Ok(Dense::F32(crate::numerics::to_f32(t.dtype, bytes)?)),
            other => Err(bad(format!(
                "{}: tensor {} is {other}, expected BF16, F16 or F32",
                self.ck.dir.display(),
                t.name
            ))),
        }
    }
}
