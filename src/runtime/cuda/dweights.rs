//! Model weights in GPU memory. FP8 and INT8 channel Linears (FP8_DYNAMIC, W8A8) stay at 1
//! byte per weight with f32 per-channel scales; dense matrices (embedding, lm_head,
//! unquantized Linears, and every other preset dequantized as the CPU loader does: FP8
//! blocks, INT4, FP4) are BF16;
//! norm weights and biases f32. q/k/v and gate/up are fused into one matrix each (rows
//! concatenated), so each takes one GEMM and one activation quantization.
//!
//! Three sources: a checkpoint streamed tensor by tensor from its mmap (pages released
//! after upload, so a 70B model never sits in host RAM), host [`Weights`] (small models,
//! tests), or random values created directly in GPU memory (benchmarks).

use super::gpu::{DBuf, Gpu};
use super::ops;
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{self, Dense, LinearWeight, Weights};
use crate::{Error, Result};
use std::borrow::Cow;

/// A Linear weight on the GPU.
pub enum DWeight {
    /// E4M3 codes `[n, k]` and f32 scales `[n]`.
    Fp8 { codes: DBuf, scales: DBuf },
    /// Int8 codes `[n, k]` and f32 scales `[n]` (W8A8-INT8).
    Int8 { codes: DBuf, scales: DBuf },
    /// BF16 `[n, k]`.
    Bf16(DBuf),
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

    /// Whether the weight is 1-byte codes with per-channel scales (FP8 or INT8), whose
    /// input is quantized per token.
    pub fn is_codes(&self) -> bool {
        !matches!(self.w, DWeight::Bf16(_))
    }

    /// The weight's device address (codes for FP8 / INT8).
    pub fn w_ptr(&self) -> u64 {
        match &self.w {
            DWeight::Fp8 { codes, .. } | DWeight::Int8 { codes, .. } => codes.ptr,
            DWeight::Bf16(w) => w.ptr,
        }
    }

    /// Bytes a full pass over the weight reads (codes + scales, or BF16 values).
    pub fn weight_bytes(&self) -> u64 {
        let (n, k) = (self.n as u64, self.k as u64);
        match self.w {
            DWeight::Fp8 { .. } | DWeight::Int8 { .. } => n * k + 4 * n,
            DWeight::Bf16(_) => 2 * n * k,
        }
    }
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

/// A Linear's weight on the host, borrowed where it can be.
pub enum HostWeight<'a> {
    Fp8 {
        codes: Cow<'a, [u8]>,
        scales: Vec<f32>,
    },
    /// Int8 codes as bytes (two's complement).
    Int8 {
        codes: Cow<'a, [u8]>,
        scales: Vec<f32>,
    },
    /// BF16 values as little-endian bytes.
    Bf16(Cow<'a, [u8]>),
}

/// One part of a fused Linear.
pub struct HostPart<'a> {
    pub rows: usize,
    pub cols: usize,
    pub w: HostWeight<'a>,
    pub bias: Option<Vec<f32>>,
}

impl HostPart<'_> {
    /// The same part owning its bytes.
    pub fn into_owned(self) -> HostPart<'static> {
        let w = match self.w {
            HostWeight::Fp8 { codes, scales } => HostWeight::Fp8 {
                codes: Cow::Owned(codes.into_owned()),
                scales,
            },
            HostWeight::Int8 { codes, scales } => HostWeight::Int8 {
                codes: Cow::Owned(codes.into_owned()),
                scales,
            },
            HostWeight::Bf16(b) => HostWeight::Bf16(Cow::Owned(b.into_owned())),
        };
        HostPart {
            rows: self.rows,
            cols: self.cols,
            w,
            bias: self.bias,
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes_of(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

impl HostWeight<'_> {
    /// 0 FP8, 1 INT8, 2 BF16: parts of one fused Linear must agree.
    fn kind(&self) -> u8 {
        match self {
            HostWeight::Fp8 { .. } => 0,
            HostWeight::Int8 { .. } => 1,
            HostWeight::Bf16(_) => 2,
        }
    }
}

/// Uploads the parts as one matrix (rows concatenated). All parts must share the column
/// count and the kind (FP8, INT8 or dense), and all or none have a bias.
pub fn upload_fused(g: &Gpu, name: &str, parts: &[HostPart]) -> Result<DLinear> {
    let k = parts[0].cols;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let kind = parts[0].w.kind();
    if parts.iter().any(|p| p.cols != k || p.w.kind() != kind) {
        return Err(Error::Unsupported(format!(
            "{name}: the CUDA backend fuses these Linears and needs them all FP8, all INT8 or \
             all dense"
        )));
    }
    let codes = kind != 2;
    let elem = if codes { 1 } else { 2 };
    if (k * elem) % 16 != 0 {
        return Err(Error::Unsupported(format!(
            "{name}: in_features {k} must be a multiple of {} for the CUDA kernels",
            16 / elem
        )));
    }
    let wbuf = g.alloc(n * k * elem)?;
    let sbuf = if codes { Some(g.alloc(n * 4)?) } else { None };
    let mut row = 0;
    for p in parts {
        match &p.w {
            HostWeight::Fp8 { codes, scales } | HostWeight::Int8 { codes, scales } => {
                g.upload(wbuf.at(row * k), codes)?;
                if let Some(s) = &sbuf {
                    g.upload(s.at(row * 4), &f32_bytes(scales))?;
                }
            }
            HostWeight::Bf16(b) => g.upload(wbuf.at(row * k * 2), b)?,
        }
        row += p.rows;
    }
    let bias = match parts.iter().filter(|p| p.bias.is_some()).count() {
        0 => None,
        c if c == parts.len() => {
            let all: Vec<f32> = parts
                .iter()
                .flat_map(|p| p.bias.clone().unwrap_or_default())
                .collect();
            Some(g.upload_new(&f32_bytes(&all))?)
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "{name}: some fused parts have a bias and some do not"
            )))
        }
    };
    let w = match sbuf {
        Some(scales) if kind == 0 => DWeight::Fp8 {
            codes: wbuf,
            scales,
        },
        Some(scales) => DWeight::Int8 {
            codes: wbuf,
            scales,
        },
        None => DWeight::Bf16(wbuf),
    };
    Ok(DLinear {
        name: name.to_string(),
        n,
        k,
        w,
        bias,
    })
}

fn vector(g: &Gpu, v: &[f32]) -> Result<DBuf> {
    g.upload_new(&f32_bytes(v))
}

/// The host-side part of a loaded [`weights::Linear`].
fn host_part(l: &weights::Linear) -> HostPart<'_> {
    let w = match &l.weight {
        LinearWeight::Fp8 { codes, scales } => HostWeight::Fp8 {
            codes: Cow::Borrowed(codes),
            scales: scales.clone(),
        },
        LinearWeight::Dense(Dense::Bf16(v)) => {
            HostWeight::Bf16(Cow::Owned(v.iter().flat_map(|b| b.to_le_bytes()).collect()))
        }
        LinearWeight::Dense(Dense::F16(v)) => HostWeight::Bf16(Cow::Owned(bf16_bytes_of(
            v.iter().map(|&b| half::f16::from_bits(b).to_f32()),
        ))),
        LinearWeight::Dense(Dense::F32(v)) => {
            HostWeight::Bf16(Cow::Owned(bf16_bytes_of(v.iter().copied())))
        }
        LinearWeight::Int8 { codes, scales } => HostWeight::Int8 {
            codes: Cow::Owned(codes.iter().map(|&c| c as u8).collect()),
            scales: scales.clone(),
        },
        // The CUDA FP8_BLOCK path (per-group activations) is not written: its weights are
        // dequantized to BF16 on upload and run weight-only.
        LinearWeight::Fp8Block { .. } => HostWeight::Bf16(Cow::Owned(
            l.to_bf16().iter().flat_map(|b| b.to_le_bytes()).collect(),
        )),
    };
    HostPart {
        rows: l.rows,
        cols: l.cols,
        w,
        bias: l.bias.clone(),
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

    /// Random weights created directly in GPU memory: FP8 Linears (codes ~ N(0,1)·112,
    /// scale 0.02/112, i.e. weights ~ N(0, 0.02)), BF16 embedding and lm_head ~ N(0, 0.02),
    /// norms 1. For speed measurements; nothing touches the host.
    pub fn random(g: &Gpu, cfg: &ModelConfig, seed: u32) -> Result<DWeights> {
        let mut next = seed;
        let mut seed = || {
            next = next.wrapping_add(0x9E37_79B9);
            next
        };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut fp8 = |name: String, n: usize, k: usize| -> Result<DLinear> {
            let codes = g.alloc(n * k)?;
            ops::fill_fp8_normal(g, codes.ptr, n * k, seed())?;
            let scales = g.alloc(n * 4)?;
            ops::fill_f32(g, scales.ptr, n, 0.02 / 112.0)?;
            Ok(DLinear {
                name,
                n,
                k,
                w: DWeight::Fp8 { codes, scales },
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

/// Reads modules of a checked checkpoint and uploads them, releasing their pages.
struct Streamer<'a> {
    g: &'a Gpu,
    ck: &'a Checkpoint,
    cfg: &'a ModelConfig,
}

impl Streamer<'_> {
    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.ck.get(name).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: tensor {name} is missing",
                self.ck.dir.display()
            ))
        })
    }

    fn vector(&self, name: &str) -> Result<DBuf> {
        let t = self.tensor(name)?;
        let v = crate::quant::to_f32(t.dtype, self.ck.data(t))?;
        vector(self.g, &v)
    }

    /// One module as a host part, borrowing the mmap for FP8 channel codes and BF16 weights;
    /// every other quantized format goes through the CPU loader (INT8 stays INT8, the
    /// dequantized formats become BF16, see [`host_part`]).
    fn part(&self, module: &str, bias: bool) -> Result<(HostPart<'_>, Vec<&TensorInfo>)> {
        use crate::runtime::config::WeightScheme;
        // The embedding is not a Linear: its table is dense whatever the scheme targets.
        let scheme = match module == "model.embed_tokens" {
            true => None,
            false => self.cfg.quantization.scheme_for(module)?,
        };
        match scheme {
            None | Some(WeightScheme::Fp8Channel) => {}
            Some(_) => {
                let lin = weights::load_linear(self.ck, self.cfg, module, bias)?;
                let used = self.tensors_of(module);
                return Ok((host_part(&lin).into_owned(), used));
            }
        }
        let t = self.tensor(&format!("{module}.weight"))?;
        let data = self.ck.data(t);
        let mut used = vec![t];
        let w = match t.dtype {
            DType::F8_E4M3 => {
                let s = self.tensor(&format!("{module}.weight_scale"))?;
                used.push(s);
                HostWeight::Fp8 {
                    codes: Cow::Borrowed(data),
                    scales: crate::quant::to_f32(s.dtype, self.ck.data(s))?,
                }
            }
            DType::BF16 => HostWeight::Bf16(Cow::Borrowed(data)),
            other => HostWeight::Bf16(Cow::Owned(bf16_bytes_of(
                crate::quant::to_f32(other, data)?.into_iter(),
            ))),
        };
        let bias = match bias {
            true => {
                let b = self.tensor(&format!("{module}.bias"))?;
                used.push(b);
                Some(crate::quant::to_f32(b.dtype, self.ck.data(b))?)
            }
            false => None,
        };
        let part = HostPart {
            rows: t.shape[0],
            cols: t.shape[1],
            w,
            bias,
        };
        Ok((part, used))
    }

    /// Every checkpoint tensor of `module` (`<module>.*`), to release after upload.
    fn tensors_of(&self, module: &str) -> Vec<&TensorInfo> {
        let prefix = format!("{module}.");
        self.ck
            .tensors()
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
            .collect()
    }

    fn linear(&self, name: &str, modules: &[&str], bias: bool) -> Result<DLinear> {
        let mut parts = Vec::new();
        let mut used = Vec::new();
        for m in modules {
            let (p, u) = self.part(m, bias)?;
            parts.push(p);
            used.extend(u);
        }
        let lin = upload_fused(self.g, name, &parts)?;
        self.g.sync()?; // the copies have read the pages: they may go
        for t in used {
            self.ck.release(t);
        }
        Ok(lin)
    }

    fn layer(&self, i: usize) -> Result<(DLayer, u64)> {
        let c = self.cfg;
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        let norm = |which: &str| -> Result<Option<DBuf>> {
            match c.qk_norm {
                true => Ok(Some(self.vector(&format!("{a}.{which}.weight"))?)),
                false => Ok(None),
            }
        };
        let (q, k, v) = (
            format!("{a}.q_proj"),
            format!("{a}.k_proj"),
            format!("{a}.v_proj"),
        );
        let (gp, up) = (format!("{m}.gate_proj"), format!("{m}.up_proj"));
        let layer = DLayer {
            input_norm: self.vector(&format!("{p}.input_layernorm.weight"))?,
            post_norm: self.vector(&format!("{p}.post_attention_layernorm.weight"))?,
            qkv: self.linear(&format!("{a}.qkv"), &[&q, &k, &v], c.qkv_bias)?,
            o: self.linear(&format!("{a}.o_proj"), &[&format!("{a}.o_proj")], c.o_bias)?,
            gate_up: self.linear(&format!("{m}.gate_up"), &[&gp, &up], c.mlp_bias)?,
            down: self.linear(
                &format!("{m}.down_proj"),
                &[&format!("{m}.down_proj")],
                c.mlp_bias,
            )?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
        };
        let bytes = [&layer.qkv, &layer.o, &layer.gate_up, &layer.down]
            .iter()
            .map(|l| l.weight_bytes())
            .sum();
        Ok((layer, bytes))
    }
}
