//! Model weights in GPU memory. FP8 and INT8 channel Linears (FP8_DYNAMIC, W8A8) stay at 1
//! byte per weight with f32 per-channel scales, FP8_BLOCK with f32 scales per row and
//! 128-column block; the weight-only grouped presets (W4A16, W4A16_ASYM, W8A16, NVFP4A16,
//! MXFP4A16) stay packed ([`super::grouped`]); dense matrices (embedding, lm_head,
//! unquantized Linears, FP8_BLOCK whose columns are not whole blocks, dequantized as the CPU
//! loader does) are BF16; norm weights and biases f32. q/k/v and gate/up are fused into one
//! matrix each (rows concatenated), so each takes one GEMM and one activation quantization.
//!
//! Three sources: a checkpoint streamed tensor by tensor from its mmap (pages released
//! after upload, so a 70B model never sits in host RAM), host [`Weights`] (small models,
//! tests), or random values created directly in GPU memory (benchmarks).

use super::gpu::{DBuf, Gpu};
use super::grouped::{self, GroupKind};
use super::ops;
use super::upload::{host_part, vector, Streamer};
pub use super::upload::{upload_fused, HostPart, HostWeight};
use crate::checkpoint::Checkpoint;
use crate::recipe::Scheme;
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{self, Weights};
use crate::{Error, Result};

/// A Linear weight on the GPU.
pub enum DWeight {
    /// E4M3 codes `[n, k]` and f32 scales `[n]`.
    Fp8 { codes: DBuf, scales: DBuf },
    /// Int8 codes `[n, k]` and f32 scales `[n]` (W8A8-INT8).
    Int8 { codes: DBuf, scales: DBuf },
    /// FP8_BLOCK with 128-column blocks: E4M3 codes `[n, k]` and f32 scales `[n, k/128]`
    /// (each row's block scales; activations quantized per token and 128-column group).
    Fp8Block { codes: DBuf, scales: DBuf },
    /// BF16 `[n, k]`.
    Bf16(DBuf),
    /// A weight-only grouped preset, packed (see [`super::grouped`]): codes, scales and
    /// offsets `[n, groups_per_row]` (offsets only for asymmetric formats; scales f32, or
    /// for FP4 bytes with `tables`: the f32 value of each byte per fused part `[parts, 256]`
    /// and each row's table offset `[n]` u32).
    Grouped {
        codes: DBuf,
        scales: DBuf,
        offsets: Option<DBuf>,
        tables: Option<(DBuf, DBuf)>,
        kind: GroupKind,
        group: usize,
    },
}

/// One (possibly fused) Linear: `y[m, n] = x[m, k] · Wᵀ (+ bias)`.
pub struct DLinear {
    pub name: String,
    pub n: usize,
    pub k: usize,
    pub w: DWeight,
    pub bias: Option<DBuf>,
}

impl DLinear {
    pub fn is_fp8(&self) -> bool {
        matches!(self.w, DWeight::Fp8 { .. })
    }

    /// Whether the weight is 1-byte codes (FP8, INT8, FP8_BLOCK), whose input is quantized
    /// per token (and group).
    pub fn is_codes(&self) -> bool {
        matches!(
            self.w,
            DWeight::Fp8 { .. } | DWeight::Int8 { .. } | DWeight::Fp8Block { .. }
        )
    }

    /// The weight's device address (codes for FP8 / INT8).
    pub fn w_ptr(&self) -> u64 {
        match &self.w {
            DWeight::Fp8 { codes, .. }
            | DWeight::Int8 { codes, .. }
            | DWeight::Fp8Block { codes, .. }
            | DWeight::Grouped { codes, .. } => codes.ptr,
            DWeight::Bf16(w) => w.ptr,
        }
    }

    /// The kernels' view of a packed grouped weight (`None` for the other kinds).
    pub fn grouped(&self) -> Option<ops::GroupedW> {
        match &self.w {
            DWeight::Grouped {
                codes,
                scales,
                offsets,
                tables,
                kind,
                group,
            } => Some(ops::GroupedW {
                codes: codes.ptr,
                scales: scales.ptr,
                offsets: offsets.as_ref().map_or(0, |o| o.ptr),
                tables: tables.as_ref().map_or((0, 0), |(t, r)| (t.ptr, r.ptr)),
                kind: *kind,
                group: *group,
            }),
            _ => None,
        }
    }

    /// Bytes a full pass over the weight reads (codes + scales, or BF16 values).
    pub fn weight_bytes(&self) -> u64 {
        let (n, k) = (self.n as u64, self.k as u64);
        match &self.w {
            DWeight::Fp8 { .. } | DWeight::Int8 { .. } => n * k + 4 * n,
            DWeight::Fp8Block { scales, .. } => n * k + scales.bytes as u64,
            DWeight::Bf16(_) => 2 * n * k,
            DWeight::Grouped {
                codes,
                scales,
                offsets,
                tables,
                ..
            } => {
                let opt = |b: Option<&DBuf>| b.map_or(0, |b| b.bytes);
                let tables = tables.as_ref().map_or(0, |(t, r)| t.bytes + r.bytes);
                (codes.bytes + scales.bytes + opt(offsets.as_ref()) + tables) as u64
            }
        }
    }
}

/// A random `[n, k]` weight of `scheme` (see [`DWeights::random`]).
fn random_linear(g: &Gpu, scheme: Scheme, (n, k): (usize, usize), seed: u32) -> Result<DWeight> {
    let filled = |count: usize, v: f32| -> Result<DBuf> {
        let b = g.alloc(count * 4)?;
        ops::fill_f32(g, b.ptr, count, v)?;
        Ok(b)
    };
    let random_bytes = |bytes: usize, seed: u32| -> Result<DBuf> {
        let b = g.alloc(bytes)?;
        ops::fill_fp8_normal(g, b.ptr, bytes, seed)?;
        Ok(b)
    };
    let codes_scales = |bytes: usize, scales: usize, s: f32| -> Result<(DBuf, DBuf)> {
        Ok((random_bytes(bytes, seed)?, filled(scales, s)?))
    };
    let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
    // A packed weight-only Linear: every group scale `scale` (FP4: random scale bytes, each
    // worth `scale`), every offset `offset`.
    let grouped = |(kind, group): (GroupKind, usize), scale: f32, offset: Option<f32>| {
        let bytes = n * grouped::padded(k) * kind.bits() / 8;
        let groups = n * grouped::groups_per_row(k, group);
        let (codes, scales, tables) = match kind {
            GroupKind::Fp4 => {
                let (codes, scales) = (random_bytes(bytes, seed)?, random_bytes(groups, seed + 1)?);
                // One table; every row's offset 0 (a fresh buffer is zeroed).
                (codes, scales, Some((filled(256, scale)?, g.alloc(n * 4)?)))
            }
            _ => {
                let (codes, scales) = codes_scales(bytes, groups, scale)?;
                (codes, scales, None)
            }
        };
        let offsets = offset.map(|o| filled(groups, o)).transpose()?;
        Ok::<_, Error>(DWeight::Grouped {
            codes,
            scales,
            offsets,
            tables,
            kind: kind.for_values([scale].iter().chain(offset.iter())),
            group,
        })
    };
    Ok(match scheme {
        Scheme::Fp8Dynamic => {
            let (codes, scales) = codes_scales(n * k, n, 0.02 / 112.0)?;
            DWeight::Fp8 { codes, scales }
        }
        Scheme::Fp8Block if k % 128 == 0 => {
            let (codes, scales) = codes_scales(n * k, n * k / 128, 0.02 / 112.0)?;
            DWeight::Fp8Block { codes, scales }
        }
        Scheme::Fp8Block => {
            return Err(Error::Unsupported(format!(
                "a synthetic FP8_BLOCK model needs in_features that are multiples of 128, \
                 not {k}"
            )))
        }
        Scheme::W8A8 => {
            let (codes, scales) = codes_scales(n * k, n, 0.02 / 64.0)?;
            DWeight::Int8 { codes, scales }
        }
        // Scales as checkpoints hold them: BF16 for the integer formats (the BF16x2 INT4
        // kernels' case), e4m3 / global (any f32) for NVFP4, a power of two for MXFP4.
        Scheme::W4A16 => grouped((GroupKind::Int4, 128), bf16(0.02 / 4.0), None)?,
        Scheme::W4A16Asym => grouped((GroupKind::Int4, 128), bf16(0.02 / 8.0), Some(8.0))?,
        Scheme::W8A16 => grouped((GroupKind::Int8, 128), bf16(0.02 / 64.0), None)?,
        Scheme::Nvfp4A16 => grouped((GroupKind::Fp4, 16), 0.02 / 3.0, None)?,
        Scheme::Mxfp4A16 => grouped((GroupKind::Fp4, 32), 1.0 / 256.0, None)?,
    })
}

/// One decoder layer.
pub struct DLayer {
    pub input_norm: DBuf,
    pub post_norm: DBuf,
    pub qkv: DLinear,
    pub o: DLinear,
    pub gate_up: DLinear,
    pub down: DLinear,
    pub q_norm: Option<DBuf>,
    pub k_norm: Option<DBuf>,
}

/// All weights of a model on the GPU.
pub struct DWeights {
    /// `[vocab, hidden]` BF16 (also the lm_head when tied).
    pub embed: DLinear,
    pub layers: Vec<DLayer>,
    pub norm: DBuf,
    pub lm_head: Option<DLinear>,
}

impl DWeights {
    pub fn lm_head(&self) -> &DLinear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Weight bytes one decode step reads: every layer's Linears plus the lm_head.
    pub fn bytes_per_token(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o, &l.gate_up, &l.down]
                    .iter()
                    .map(|x| x.weight_bytes())
                    .sum::<u64>()
            })
            .sum();
        layers + self.lm_head().weight_bytes()
    }
}

impl DWeights {
    /// Uploads host [`Weights`] (already checked by [`Weights::load`]).
    pub fn from_host(g: &Gpu, w: &Weights) -> Result<DWeights> {
        let up = |name: &str, ls: &[&weights::Linear]| {
            let parts: Vec<HostPart> = ls.iter().map(|l| host_part(l)).collect();
            upload_fused(g, name, &parts)
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            layers.push(DLayer {
                input_norm: vector(g, &l.input_norm)?,
                post_norm: vector(g, &l.post_attention_norm)?,
                qkv: up(
                    &format!("{p}.self_attn.qkv"),
                    &[&l.q_proj, &l.k_proj, &l.v_proj],
                )?,
                o: up(&format!("{p}.self_attn.o_proj"), &[&l.o_proj])?,
                gate_up: up(&format!("{p}.mlp.gate_up"), &[&l.gate_proj, &l.up_proj])?,
                down: up(&format!("{p}.mlp.down_proj"), &[&l.down_proj])?,
                q_norm: l.q_norm.as_deref().map(|v| vector(g, v)).transpose()?,
                k_norm: l.k_norm.as_deref().map(|v| vector(g, v)).transpose()?,
            });
        }
        Ok(DWeights {
            embed: up("model.embed_tokens", &[&w.embed])?,
            layers,
            norm: vector(g, &w.norm)?,
            lm_head: w
                .lm_head
                .as_ref()
                .map(|l| up("lm_head", &[l]))
                .transpose()?,
        })
    }

    /// Streams a checkpoint to the GPU tensor by tensor (in layer order), after the same
    /// integrity check as the CPU loader. `progress(done_bytes, total_bytes)` is called
    /// after each layer.
    pub fn from_checkpoint(
        g: &Gpu,
        ck: &Checkpoint,
        cfg: &ModelConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DWeights> {
        weights::check(ck, cfg)?;
        let total = ck.total_bytes();
        let s = Streamer { g, ck, cfg };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let mut done = 0u64;
        for i in 0..cfg.num_layers {
            let (layer, bytes) = s.layer(i)?;
            layers.push(layer);
            done += bytes;
            progress(done, total);
        }
        let embed = s.linear("model.embed_tokens", &["model.embed_tokens"], false)?;
        let lm_head = match cfg.tie_word_embeddings {
            true => None,
            false => Some(s.linear("lm_head", &["lm_head"], false)?),
        };
        let norm = s.vector("model.norm.weight")?;
        progress(total, total);
        Ok(DWeights {
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Random weights created directly in GPU memory, the Linears in `scheme`: FP8 codes
    /// ~ e4m3(N(0,1)·112) with scales 0.02/112 (weights ~ N(0, 0.02)) per channel or per
    /// 128×128 block; INT8 and INT4 (groups of 128) codes of random bytes with scales of the
    /// same order. BF16 embedding and lm_head ~ N(0, 0.02), norms 1. For speed measurements;
    /// nothing touches the host.
    pub fn random(g: &Gpu, cfg: &ModelConfig, scheme: Scheme, seed: u32) -> Result<DWeights> {
        let mut next = seed;
        let mut seed = || {
            next = next.wrapping_add(0x9E37_79B9);
            next
        };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut fp8 = |name: String, n: usize, k: usize| -> Result<DLinear> {
            let w = random_linear(g, scheme, (n, k), seed())?;
            Ok(DLinear {
                name,
                n,
                k,
                w,
                bias: None,
            })
        };
        let ones = |n: usize| -> Result<DBuf> {
            let b = g.alloc(n * 4)?;
            ops::fill_f32(g, b.ptr, n, 1.0)?;
            Ok(b)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            layers.push(DLayer {
                input_norm: ones(h)?,
                post_norm: ones(h)?,
                qkv: fp8(format!("{p}.self_attn.qkv"), qd + 2 * kvd, h)?,
                o: fp8(format!("{p}.self_attn.o_proj"), h, qd)?,
                gate_up: fp8(format!("{p}.mlp.gate_up"), 2 * i, h)?,
                down: fp8(format!("{p}.mlp.down_proj"), h, i)?,
                q_norm: None,
                k_norm: None,
            });
        }
        let mut dense = |name: &str| -> Result<DLinear> {
            let w = g.alloc(cfg.vocab_size * h * 2)?;
            ops::fill_bf16_normal(g, w.ptr, cfg.vocab_size * h, seed(), 0.0, 0.02)?;
            Ok(DLinear {
                name: name.into(),
                n: cfg.vocab_size,
                k: h,
                w: DWeight::Bf16(w),
                bias: None,
            })
        };
        let embed = dense("model.embed_tokens")?;
        let lm_head = match cfg.tie_word_embeddings {
            true => None,
            false => Some(dense("lm_head")?),
        };
        g.sync()?;
        Ok(DWeights {
            embed,
            layers,
            norm: ones(h)?,
            lm_head,
        })
    }
}
