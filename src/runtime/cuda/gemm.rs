//! The numerics of [`super::model::CudaModel`]'s forward pass on the GPU, the same model definition as the CPU backend
//! with vLLM's W8A8 semantics (FP8, or INT8 for the W8A8 preset): per-token dynamic
//! activation scales fused into the producing kernel (RMSNorm → FP8/int8, SiLU·up →
//! FP8/int8), GEMMs with the epilogue `bf16(s_a · (s_w · acc))`, BF16 q/k/v and KV cache,
//! f32 residual stream.
//!
//! GEMM dispatch per Linear: up to 16 activation rows, qforge's GEMV kernels (decode); more,
//! cuBLASLt (prefill) with outer-vector scaling, else cuBLASLt with f32 sums plus the
//! epilogue kernel, else (no cuBLASLt) qforge's tensor-core GEMM (`kernels/gemm.cu`). INT8
//! and FP8_BLOCK Linears take that GEMM for prefill (no cuBLASLt int8 or block-scaled
//! path). Packed weight-only Linears (W4A16, NVFP4A16, …) take their own GEMV up to 16 rows,
//! and above it the BF16 GEMM on a scratch copy of their dequantized values. `QFORGE_GEMM`
//! forces one: `gemv`, `lt-raw`, `lt-scaled` (default `auto`).

use super::cublaslt::{Blas, Kind};
use super::device_weights::{DLinear, DWeight};
use super::gpu::{DBuf, Gpu};
use super::ops::{self, ActOut, AttnDims, Codes};
use crate::runtime::config::ModelConfig;
use crate::runtime::cpu::ops::inv_freq;
use crate::{Error, Result};

/// How prefill GEMMs run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmMode {
    Auto,
    Gemv,
    LtRaw,
    LtScaled,
}

impl GemmMode {
    /// `QFORGE_GEMM`, default [`GemmMode::Auto`].
    pub fn from_env() -> Result<GemmMode> {
        match std::env::var("QFORGE_GEMM").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(GemmMode::Auto),
            Ok("gemv") => Ok(GemmMode::Gemv),
            Ok("lt-raw") => Ok(GemmMode::LtRaw),
            Ok("lt-scaled") => Ok(GemmMode::LtScaled),
            Ok(o) => Err(Error::Runtime(format!(
                "QFORGE_GEMM={o}: expected auto, gemv, lt-raw or lt-scaled"
            ))),
        }
    }
}

/// cuBLASLt workspace size.
const WORKSPACE: usize = 64 << 20;

/// The GEMM engine: cuBLASLt (when found) and the buffers its fallbacks need.
pub struct Gemm {
    pub blas: Option<Blas>,
    /// Why cuBLASLt is not used, or which variant is.
    pub note: String,
    pub mode: GemmMode,
    /// Whether outer-vector scaling worked (None = not tried yet).
    pub outer_ok: Option<bool>,
    acc: Option<DBuf>,
    /// BF16 values of the grouped Linear a prefill GEMM is reading.
    dequantized: Option<DBuf>,
    _workspace: Option<DBuf>,
}

impl Gemm {
    pub fn new(g: &Gpu, mode: GemmMode) -> Result<Gemm> {
        if mode == GemmMode::Gemv {
            return Ok(Gemm::without("QFORGE_GEMM=gemv".into(), mode));
        }
        let (ws, blas) = if g.is_emulated() {
            (None, Ok(Blas::Host))
        } else {
            let ws = g.alloc(WORKSPACE)?;
            let b = Blas::new(ws.ptr, WORKSPACE);
            (Some(ws), b)
        };
        Ok(match blas {
            Ok(b) => Gemm {
                note: b.describe(),
                blas: Some(b),
                mode,
                outer_ok: (mode == GemmMode::LtRaw).then_some(false),
                acc: None,
                dequantized: None,
                _workspace: ws,
            },
            Err(e) if mode == GemmMode::Auto => Gemm::without(e.to_string(), mode),
            Err(e) => return Err(e),
        })
    }

    fn without(note: String, mode: GemmMode) -> Gemm {
        Gemm {
            blas: None,
            note,
            mode,
            outer_ok: None,
            acc: None,
            dequantized: None,
            _workspace: None,
        }
    }

    /// The activation buffer kind `lin` reads.
    pub fn wants(lin: &DLinear, a: &Acts) -> ActOut {
        let (q, s) = (a.q.ptr, a.s.ptr);
        match lin.w {
            DWeight::Fp8 { .. } => ActOut::Fp8 { q, s },
            DWeight::Int8 { .. } => ActOut::Int8 { q, s },
            // FP8_BLOCK quantizes its BF16 input per group itself (`Gemm::linear`).
            DWeight::Bf16(_) | DWeight::Grouped { .. } | DWeight::Fp8Block { .. } => {
                ActOut::Bf16(a.b.ptr)
            }
        }
    }

    /// `y[rows, n] = act[in_row.., k] · Wᵀ (+ bias)`; BF16 out, or f32 when `f32_out`
    /// (dense and packed weights only: the logits).
    pub fn linear(
        &mut self,
        g: &Gpu,
        lin: &DLinear,
        a: &Acts,
        (rows, in_row): (usize, usize),
        y: u64,
        f32_out: bool,
    ) -> Result<()> {
        let (n, k) = (lin.n, lin.k);
        let bias = lin.bias.as_ref().map_or(0, |b| b.ptr);
        if f32_out && lin.is_codes() {
            return Err(Error::Unsupported(format!(
                "{}: a quantized lm_head is not supported by the CUDA backend",
                lin.name
            )));
        }
        // Dense kinds: the cuBLASLt GEMM for prefill when present.
        let small = rows <= ops::GEMV_MAX_ROWS || self.blas.is_none();
        // 1-byte codes: qforge's GEMM for prefill without a cuBLASLt path (INT8, FP8_BLOCK,
        // FP8 when cuBLASLt is missing); QFORGE_GEMM=gemv keeps the GEMV kernels.
        let gemv = rows <= ops::GEMV_MAX_ROWS || self.mode == GemmMode::Gemv;
        let mnk = (rows, n, k);
        match &lin.w {
            DWeight::Fp8 { codes, scales } | DWeight::Int8 { codes, scales } => {
                let w = (codes.ptr, scales.ptr, bias);
                let x = (a.q.at(in_row * k), a.s.at(in_row * 4));
                let kind = match lin.w {
                    DWeight::Int8 { .. } => Codes::Int8,
                    _ => Codes::Fp8,
                };
                match kind {
                    _ if gemv => ops::gemv_codes(g, kind, w, x, y, mnk),
                    Codes::Fp8 if self.blas.is_some() => self.fp8_lt(g, w, x, y, mnk),
                    _ => ops::gemm_codes(g, kind, w, x, y, mnk),
                }
            }
            DWeight::Fp8Block { codes, scales } => {
                // The BF16 input, quantized here per token and 128-column group.
                let xq = (a.q.ptr, a.sg.ptr);
                ops::quant_groups(g, a.b.at(in_row * k * 2), rows, k, xq)?;
                let w = (codes.ptr, scales.ptr, bias);
                match gemv {
                    true => ops::gemv_codes(g, Codes::Fp8Block, w, xq, y, mnk),
                    false => ops::gemm_codes(g, Codes::Fp8Block, w, xq, y, mnk),
                }
            }
            DWeight::Bf16(w) => {
                let x = a.b.at(in_row * k * 2);
                match small {
                    true => ops::gemv_bf16(g, (w.ptr, bias), x, (y, f32_out), mnk),
                    false => self.dense(g, lin, w.ptr, x, (y, f32_out), rows),
                }
            }
            DWeight::Grouped { .. } => {
                let x = a.b.at(in_row * k * 2);
                let gw = lin.grouped().expect("a grouped weight");
                if small {
                    return ops::gemv_grouped(g, (gw, bias), x, (y, f32_out), mnk);
                }
                // Prefill: the BF16 values the GEMV computes in registers, then the dense GEMM.
                let w = Self::grow(g, &mut self.dequantized, n * k * 2)?;
                ops::dequant_grouped(g, gw, w, (n, k))?;
                self.dense(g, lin, w, x, (y, f32_out), rows)
            }
        }
    }

    /// The cuBLASLt BF16 GEMM of `rows` rows against the dense `[n, k]` matrix at `w`.
    fn dense(
        &mut self,
        g: &Gpu,
        lin: &DLinear,
        w: u64,
        x: u64,
        (y, f32_out): (u64, bool),
        rows: usize,
    ) -> Result<()> {
        let (n, k) = (lin.n, lin.k);
        let bias = lin.bias.as_ref().map_or(0, |b| b.ptr);
        if bias == 0 {
            let blas = self.blas.as_mut().expect("checked by linear()");
            let kind = Kind::Bf16 { f32_out };
            return blas.matmul(kind, (rows, n, k), w, x, y, 0, 0, g);
        }
        if f32_out {
            return Err(Error::Unsupported(format!(
                "{}: bias with f32 output",
                lin.name
            )));
        }
        // f32 sums, then the bias before the one rounding to BF16 (as the GEMV does).
        let acc = Self::grow(g, &mut self.acc, rows * n * 4)?;
        let blas = self.blas.as_mut().expect("checked by linear()");
        let kind = Kind::Bf16 { f32_out: true };
        blas.matmul(kind, (rows, n, k), w, x, acc, 0, 0, g)?;
        ops::scale_epilogue(g, acc, 0, 0, bias, rows, n, y)
    }

    /// The scratch buffer `buf`, grown to at least `bytes` bytes.
    fn grow(g: &Gpu, buf: &mut Option<DBuf>, bytes: usize) -> Result<u64> {
        if buf.as_ref().is_none_or(|b| b.bytes < bytes) {
            *buf = None; // free the old one first
            *buf = Some(g.alloc(bytes)?);
        }
        Ok(buf.as_ref().expect("allocated above").ptr)
    }

    /// Prefill FP8 GEMM through cuBLASLt: outer-vector scaling when it works (and there is
    /// no bias: it must be added before the rounding to BF16), else f32 sums and the
    /// epilogue kernel.
    fn fp8_lt(
        &mut self,
        g: &Gpu,
        (w, sw, bias): (u64, u64, u64),
        (x, sa): (u64, u64),
        y: u64,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        if self.outer_ok != Some(false) && bias == 0 {
            let blas = self.blas.as_mut().expect("cuBLASLt present");
            match blas.matmul(Kind::Fp8Scaled, (m, n, k), w, x, y, sa, sw, g) {
                Ok(()) => {
                    self.outer_ok = Some(true);
                    return Ok(());
                }
                Err(e) if self.outer_ok.is_none() && self.mode == GemmMode::Auto => {
                    self.outer_ok = Some(false);
                    self.note = format!("{}; outer-vector scaling unavailable ({e})", self.note);
                }
                Err(e) => return Err(e),
            }
        }
        let acc = Self::grow(g, &mut self.acc, m * n * 4)?;
        let blas = self.blas.as_mut().expect("cuBLASLt present");
        blas.matmul(Kind::Fp8Raw, (m, n, k), w, x, acc, 0, 0, g)?;
        ops::scale_epilogue(g, acc, sa, sw, bias, m, n, y)
    }

    /// Which FP8 prefill path runs: cuBLASLt (outer-vector scaled, or f32 sums + epilogue),
    /// qforge's GEMM, or its GEMV.
    pub fn fp8_path(&self) -> &'static str {
        match (&self.blas, self.outer_ok) {
            (None, _) if self.mode == GemmMode::Gemv => "qforge GEMV (QFORGE_GEMM=gemv)",
            (None, _) => "qforge GEMM (no cuBLASLt)",
            (Some(_), Some(false)) => "cuBLASLt f32 sums + qforge epilogue",
            (Some(_), _) => "cuBLASLt outer-vector scaled",
        }
    }
}

/// Activation buffers a Linear reads: FP8 codes + scales, or BF16.
pub struct Acts {
    pub q: DBuf,
    pub s: DBuf,
    pub b: DBuf,
    /// Per-group scales `[rows, width/128]` (FP8_BLOCK's activations).
    pub sg: DBuf,
}

/// Every per-step buffer, sized for `rows` rows.
pub struct Scratch {
    pub rows: usize,
    /// A step's position and token ids: [pos, ids…] as u32.
    pub ids: DBuf,
    pub x: DBuf,
    pub act: Acts,
    pub qkv: DBuf,
    pub q: DBuf,
    pub att: DBuf,
    pub proj: DBuf,
    pub gu: DBuf,
    pub logits: Option<DBuf>,
    /// (value bits, index) pairs of [`super::ops::argmax_rows`] / [`super::ops::top_k_rows`].
    pub top: DBuf,
}

impl Scratch {
    pub fn new(g: &Gpu, c: &ModelConfig, rows: usize) -> Result<Scratch> {
        let (h, i, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let widest = h.max(i).max(qd);
        Ok(Scratch {
            rows,
            ids: g.alloc((rows + 1) * 4)?,
            x: g.alloc(rows * h * 4)?,
            act: Acts {
                q: g.alloc(rows * widest)?,
                s: g.alloc(rows * 4)?,
                b: g.alloc(rows * widest * 2)?,
                sg: g.alloc(rows * widest.div_ceil(128) * 4)?,
            },
            qkv: g.alloc(rows * (qd + 2 * kvd) * 2)?,
            q: g.alloc(rows * qd * 2)?,
            att: g.alloc(rows * qd * 2)?,
            proj: g.alloc(rows * h * 2)?,
            gu: g.alloc(rows * 2 * i * 2)?,
            logits: None,
            top: g.alloc(super::ops::TOP_K_MAX * 8)?,
        })
    }

    /// The logits buffer with room for `rows` rows of `vocab`.
    pub fn logits(&mut self, g: &Gpu, rows: usize, vocab: usize) -> Result<u64> {
        let need = rows * vocab * 4;
        if self.logits.as_ref().is_none_or(|b| b.bytes < need) {
            self.logits = None;
            self.logits = Some(g.alloc(need)?);
        }
        Ok(self.logits.as_ref().expect("allocated above").ptr)
    }
}

/// The attention shape of a config, checked against the kernels' limits.
pub fn attn_dims(c: &ModelConfig) -> Result<AttnDims> {
    let group = c.num_heads / c.num_kv_heads;
    if c.head_dim > 256 || c.head_dim % 2 != 0 || group > 32 {
        return Err(Error::Unsupported(format!(
            "the CUDA attention kernel needs an even head_dim <= 256 and at most 32 query heads \
             per kv head (got head_dim {}, {group})",
            c.head_dim
        )));
    }
    if c.hidden_size % 2 != 0 || c.intermediate_size % 2 != 0 {
        return Err(Error::Unsupported(
            "hidden and intermediate sizes must be even".into(),
        ));
    }
    Ok(AttnDims {
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    })
}

/// cos/sin of `p · inv_freq[i]` for every position, computed exactly as the CPU backend's
/// tables (f32 angle, f64 cos/sin rounded to f32).
pub fn rope_tables(g: &Gpu, c: &ModelConfig, max_seq: usize) -> Result<(DBuf, DBuf)> {
    let inv = inv_freq(&c.rope, c.head_dim);
    let mut cos = Vec::with_capacity(max_seq * inv.len() * 4);
    let mut sin = Vec::with_capacity(max_seq * inv.len() * 4);
    for p in 0..max_seq {
        for &f in &inv {
            let a = (p as f32 * f) as f64;
            cos.extend_from_slice(&(a.cos() as f32).to_le_bytes());
            sin.extend_from_slice(&(a.sin() as f32).to_le_bytes());
        }
    }
    Ok((g.upload_new(&cos)?, g.upload_new(&sin)?))
}
