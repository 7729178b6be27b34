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

mod calibrated;
mod check;
mod dequant;
pub use calibrated::{fp8_kv_round_trip, requantize};
pub use check::{check, is_quantized};
use check::{Expect, Kind};
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
    /// A static per-tensor activation scale (`input_scale` of a calibrated output): FP8 and
    /// INT8 weights quantize their input with it instead of per token (`cpu::linear`).
    pub input_scale: Option<f32>,
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
    /// `[k_scale, v_scale]` of an FP8 KV cache (`kv_cache_scheme`); `None` keeps the cache in
    /// f32.
    pub kv_scales: Option<[f32; 2]>,
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
        let mut layer = Layer {
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
            kv_scales: match c.kv_cache_fp8 {
                true => Some([
                    self.vector(&format!("{p}.self_attn.k_scale"))?[0],
                    self.vector(&format!("{p}.self_attn.v_scale"))?[0],
                ]),
                false => None,
            },
        };
        self.share_fused_scales(&mut layer)?;
        Ok(layer)
    }

    /// vLLM's fused q/k/v and gate/up share their scales ([`calibrated::share_fused_scales`]).
    fn share_fused_scales(&self, l: &mut Layer) -> Result<()> {
        let per_tensor = |ls: &[&Linear]| -> Result<bool> {
            for lin in ls {
                if self.cfg.quantization.scheme_for(&lin.name)? != Some(WeightScheme::Fp8Tensor) {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let qkv = per_tensor(&[&l.q_proj, &l.k_proj, &l.v_proj])?;
        calibrated::share_fused_scales(&mut [&mut l.q_proj, &mut l.k_proj, &mut l.v_proj], qkv);
        let gate_up = per_tensor(&[&l.gate_proj, &l.up_proj])?;
        calibrated::share_fused_scales(&mut [&mut l.gate_proj, &mut l.up_proj], gate_up);
        Ok(())
    }

    /// A Linear module by its config scheme (the check made sure the tensors match it): FP8
    /// and INT8 channel codes as stored, the other formats dequantized ([`dequant`]), dense
    /// otherwise.
    fn linear(&self, module: &str, bias: bool) -> Result<Linear> {
        let int8 = match self.cfg.quantization.scheme_for(module)? {
            None => return self.dense_linear(module, bias),
            Some(WeightScheme::Fp8Channel | WeightScheme::Fp8Tensor) => false,
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
        let mut scales = self.vector(&format!("{module}.weight_scale"))?;
        if scales.len() == 1 {
            scales = vec![scales[0]; w.shape[0]]; // one per-tensor scale, kept per row
        }
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
            input_scale: match self.cfg.quantization.static_input_for(module)? {
                true => Some(self.vector(&format!("{module}.input_scale"))?[0]),
                false => None,
            },
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
            input_scale: None,
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
            input_scale: None,
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
            input_scale: None,
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
