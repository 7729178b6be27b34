//! One Linear layer on the CPU: `y[t, :] = x[t, :] · Wᵀ (+ bias)` for `t` activation rows,
//! parallel (rayon) over the weight's output rows.
//!
//! FP8 weights run vLLM's W8A8 semantics (fixtures/README.md §6.2), per activation row `x`:
//! ```text
//! s_a    = max(max|x| / 448, 1/(448·512))
//! q_a[k] = e4m3_rne(clamp(x[k] / s_a, -448, 448))
//! y[n]   = s_a · (s_w[n] · Σ_k q_a[k]·q_w[n,k])       (the sum exact, rounded once to f32)
//! ```
//! INT8 channel weights (the W8A8 preset) run vLLM's W8A8-INT8 path (compressed-tensors
//! `CompressedTensorsW8A8Int8` → `ops.scaled_int8_quant` → `cutlass_scaled_mm`), per
//! activation row `x` ([`quantize_int8_activations`]):
//! ```text
//! amax   = max_k |x[k]|                            (NaN ignored, like CUDA fmaxf)
//! s_a    = amax / 127
//! q_a[k] = sat_i8(rne(x[k] · (127 / amax)))        (an all-zero row gives q_a = 0, s_a = 0)
//! y[n]   = s_a · (s_w[n] · f32(Σ_k q_a[k]·q_w[n,k]))  (the sum exact in i32)
//! ```
//! FP8_BLOCK weights (`[br, bc]` blocks, columns a multiple of `bc`) run vLLM's block path
//! (`per_token_group_quant_fp8` → `w8a8_block_fp8_matmul`), per activation row `x` and group
//! `g` of `bc` columns ([`quantize_group_activations`]):
//! ```text
//! s_a[g]   = max(max_{k∈g} |x[k]|, 1e-10) / 448
//! q_a[k]   = e4m3_rne(clamp(x[k] / s_a[g], -448, 448))
//! y[n]     = Σ_g f32(Σ_{k∈g} q_a[k]·q_w[n,k]) · s_a[g] · s_w[n/br, g]   (summed in f32, in g order)
//! ```
//! A static `input_scale` (calibrated outputs) replaces the per-token activation scale of FP8
//! and INT8 weights with the one stored scale `s` ([`quantize_static_fp8`]: `q_a[k] =
//! e4m3_rne(clamp(x[k] · (1/s), ±448))`; [`quantize_static_int8`]: `q_a[k] = sat_i8(rne(x[k] /
//! s))`); the sums and the epilogue are the same.
//!
//! Dense weights are widened to f32 and accumulated in f32.

use super::dot::{dense_dot, fp8_dot, int8_dot, prepare_fp8_acts, TB};
use crate::numerics::{e4m3_to_f32, f32_to_e4m3, E4M3_MAX};
use crate::runtime::weights::{Linear, LinearWeight};
use crate::{Error, Result};
use rayon::prelude::*;

/// vLLM's smallest per-token activation scale, `1 / (448 · 512)` as an f32 division.
pub const MIN_ACT_SCALE: f32 = 1.0 / (448.0 * 512.0);

/// Reusable buffers for [`forward`]; they grow to the largest call and are then reused, so a
/// decode loop does not allocate.
#[derive(Debug, Default)]
pub struct LinearScratch {
    /// Activation code values `[t, cols]` (FP8 weights only).
    q: Vec<f32>,
    /// The same in the form the FP8 kernel reads ([`prepare_fp8_acts`]).
    q64: Vec<f64>,
    /// Activation scales `[t]` (FP8 and INT8 weights), `[t, groups]` (FP8_BLOCK).
    s: Vec<f32>,
    /// Activation int8 codes `[t, cols]` (INT8 weights only).
    q8: Vec<i8>,
    /// The output transposed, `[rows, t]`, when `t > 1`.
    yt: Vec<f32>,
    /// Dense weights with many rows go through [`super::prefill::dense_gemm`]
    /// (`Backend::set_fast_prefill`).
    pub gemm: bool,
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// vLLM's `per_token_group_quant_fp8` of `x` (`[t, k]`, `k` a multiple of `group`): one scale
/// per row and group into `s[..t * k / group]`, code values (decoded, exact) into `q`.
pub fn quantize_group_activations(x: &[f32], group: usize, q: &mut [f32], s: &mut [f32]) {
    for ((part, qpart), s) in x
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group))
        .zip(s.iter_mut())
    {
        let amax = part.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let scale = amax.max(1e-10) / E4M3_MAX;
        *s = scale;
        for (qv, &v) in qpart.iter_mut().zip(part) {
            *qv = e4m3_to_f32(f32_to_e4m3((v / scale).clamp(-E4M3_MAX, E4M3_MAX)));
        }
    }
}

/// Static per-tensor FP8 quantization of `x` with the stored `input_scale` (every row's
/// scale in `s` is `scale`), as vLLM's `scaled_fp8_quant` with a static scale: its kernel
/// inverts the scale once and multiplies, `e4m3_rne(clamp(x · (1 / scale), ±448))`.
pub fn quantize_static_fp8(x: &[f32], scale: f32, q: &mut [f32], s: &mut [f32]) {
    s.fill(scale);
    let inv = 1.0 / scale;
    for (qv, &v) in q.iter_mut().zip(x) {
        *qv = e4m3_to_f32(f32_to_e4m3((v * inv).clamp(-E4M3_MAX, E4M3_MAX)));
    }
}

/// Static per-tensor symmetric int8 quantization of `x` with the stored `input_scale`, as
/// vLLM's `static_scaled_int8_quant_kernel`: `float_to_int8_rn(x / scale)` (a division here,
/// round half to even, saturating; NaN → 0).
pub fn quantize_static_int8(x: &[f32], scale: f32, q: &mut [i8], s: &mut [f32]) {
    s.fill(scale);
    for (qv, &v) in q.iter_mut().zip(x) {
        *qv = (v / scale).round_ties_even() as i8;
    }
}

/// Dynamic per-token FP8 quantization of `x` (`[t, k]`): scales into `s[..t]`, code values
/// (decoded back to f32, exact) into `q[..t*k]`. NaN in a row propagates to its scale.
pub fn quantize_activations(x: &[f32], k: usize, q: &mut [f32], s: &mut [f32]) {
    for ((row, qrow), s) in x
        .chunks_exact(k)
        .zip(q.chunks_exact_mut(k))
        .zip(s.iter_mut())
    {
        let amax = row.iter().fold(0.0f32, |m, &v| {
            if v.is_nan() || v.abs() > m {
                v.abs()
            } else {
                m
            }
        });
        let scale = amax / E4M3_MAX;
        // Written as a comparison (not f32::max) so that a NaN scale stays NaN, as in torch.
        let scale = if scale < MIN_ACT_SCALE {
            MIN_ACT_SCALE
        } else {
            scale
        };
        *s = scale;
        for (qv, &v) in qrow.iter_mut().zip(row) {
            *qv = e4m3_to_f32(f32_to_e4m3((v / scale).clamp(-E4M3_MAX, E4M3_MAX)));
        }
    }
}

/// Dynamic per-token symmetric int8 quantization of `x` (`[t, k]`), exactly as vLLM's
/// `dynamic_scaled_int8_quant_kernel` (csrc/quantization/compressed_tensors/
/// int8_quant_kernels.cu) computes it: `amax` by `fmaxf` (which skips NaN), the stored
/// scale `amax / 127.0f`, and the codes `float_to_int8_rn(x * (127.0f / amax))` — a multiply
/// by the reciprocal, not a division by the scale, which can differ in the last bit and so at
/// .5 ties — where `float_to_int8_rn` is PTX `cvt.rni.sat.s8.f32` (round half to even,
/// saturate to [-128, 127], NaN → 0). Rust's `round_ties_even` then the saturating `as i8`
/// cast (NaN → 0) is that instruction. An all-zero row has `amax = 0`: the reciprocal is
/// +inf, every `0 · inf` is NaN → code 0, and the scale is 0, so its outputs are 0 (+ bias).
pub fn quantize_int8_activations(x: &[f32], k: usize, q: &mut [i8], s: &mut [f32]) {
    for ((row, qrow), s) in x
        .chunks_exact(k)
        .zip(q.chunks_exact_mut(k))
        .zip(s.iter_mut())
    {
        let amax = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        *s = amax / 127.0;
        let inv = 127.0f32 / amax;
        for (qv, &v) in qrow.iter_mut().zip(row) {
            *qv = (v * inv).round_ties_even() as i8;
        }
    }
}

/// `y[..t*rows] = x[..t*cols] · Wᵀ (+ bias)`, both row-major.
pub fn forward(lin: &Linear, x: &[f32], t: usize, y: &mut [f32], scratch: &mut LinearScratch) {
    let (n, k) = (lin.rows, lin.cols);
    assert!(
        x.len() >= t * k && y.len() >= t * n,
        "{}: buffer too small",
        lin.name
    );
    let x = &x[..t * k];
    if let LinearWeight::Dense(w) = &lin.weight {
        if scratch.gemm && t >= super::prefill::GEMM_MIN_ROWS {
            return super::prefill::dense_gemm(lin, w, x, t, &mut y[..t * n]);
        }
    }
    let acts = match &lin.weight {
        LinearWeight::Fp8 { .. } => {
            let q = grow(&mut scratch.q, t * k);
            let s = grow(&mut scratch.s, t);
            match lin.input_scale {
                Some(scale) => quantize_static_fp8(x, scale, q, s),
                None => quantize_activations(x, k, q, s),
            }
            prepare_fp8_acts(q, grow(&mut scratch.q64, t * k));
            Acts::Fp8 {
                q: &scratch.q64[..t * k],
                s: &scratch.s[..t],
            }
        }
        LinearWeight::Int8 { .. } => {
            let q = grow(&mut scratch.q8, t * k);
            let s = grow(&mut scratch.s, t);
            match lin.input_scale {
                Some(scale) => quantize_static_int8(x, scale, q, s),
                None => quantize_int8_activations(x, k, q, s),
            }
            Acts::Int8 {
                q: &scratch.q8[..t * k],
                s: &scratch.s[..t],
            }
        }
        LinearWeight::Fp8Block { block_cols, .. } => {
            let q = grow(&mut scratch.q, t * k);
            let groups = t * k / block_cols;
            quantize_group_activations(x, *block_cols, q, grow(&mut scratch.s, groups));
            prepare_fp8_acts(q, grow(&mut scratch.q64, t * k));
            Acts::Fp8 {
                q: &scratch.q64[..t * k],
                s: &scratch.s[..groups],
            }
        }
        LinearWeight::Dense(_) => Acts::Dense(x),
    };
    // One task per block of weight rows; each computes that row against all t activations,
    // so a weight row is read (and decoded) once per call.
    let out = if t == 1 {
        &mut y[..n]
    } else {
        grow(&mut scratch.yt, n * t)
    };
    out.par_chunks_mut(t)
        .enumerate()
        .with_min_len(16)
        .for_each(|(row, o)| row_dot(lin, row, &acts, o));
    if t > 1 {
        for (r, col) in scratch.yt[..n * t].chunks_exact(t).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * n + r] = v;
            }
        }
    }
}

/// A matmul's activations: as given (dense weights) or quantized (FP8 or INT8 weights).
enum Acts<'a> {
    Dense(&'a [f32]),
    Fp8 { q: &'a [f64], s: &'a [f32] },
    Int8 { q: &'a [i8], s: &'a [f32] },
}

/// Activation rows `t0 ..` (at most [`TB`]) of a `[t, k]` buffer, as slices.
fn rows<T>(a: &[T], k: usize, t0: usize, t: usize) -> [&[T]; TB] {
    std::array::from_fn(|j| {
        let r = (t0 + j).min(t - 1);
        &a[r * k..(r + 1) * k]
    })
}

/// `out[i]` = output `row` for activation row `i`, for every `i < out.len()`.
fn row_dot(lin: &Linear, row: usize, acts: &Acts, out: &mut [f32]) {
    let k = lin.cols;
    let t = out.len();
    for t0 in (0..t).step_by(TB) {
        let nt = TB.min(t - t0);
        let o = &mut out[t0..t0 + nt];
        match (&lin.weight, acts) {
            (LinearWeight::Fp8 { codes, scales }, Acts::Fp8 { q, s }) => {
                fp8_dot(&codes[row * k..(row + 1) * k], &rows(q, k, t0, t)[..nt], o);
                for (j, v) in o.iter_mut().enumerate() {
                    *v = s[t0 + j] * (scales[row] * *v);
                }
            }
            (LinearWeight::Int8 { codes, scales }, Acts::Int8 { q, s }) => {
                let mut acc = [0i32; TB];
                int8_dot(
                    &codes[row * k..(row + 1) * k],
                    &rows(q, k, t0, t)[..nt],
                    &mut acc,
                );
                // vLLM's ScaledEpilogue (csrc/cutlass_extensions/epilogue/
                // scaled_mm_epilogues_c3x.hpp): `ScaleA * (ScaleB * float(acc))`, both
                // products in f32 — the weight scale first, then the token scale.
                for (j, v) in o.iter_mut().enumerate() {
                    *v = s[t0 + j] * (scales[row] * acc[j] as f32);
                }
            }
            (
                LinearWeight::Fp8Block {
                    codes,
                    scales,
                    block_rows,
                    block_cols,
                },
                Acts::Fp8 { q, s },
            ) => {
                let (bc, groups) = (*block_cols, k / block_cols);
                let sw = &scales[(row / block_rows) * groups..][..groups];
                let mut part = [0.0f32; TB];
                o.fill(0.0);
                for (g, &sw) in sw.iter().enumerate() {
                    let xs: [&[f64]; TB] = std::array::from_fn(|j| {
                        let r = (t0 + j).min(t - 1);
                        &q[r * k + g * bc..r * k + (g + 1) * bc]
                    });
                    let w = &codes[row * k + g * bc..row * k + (g + 1) * bc];
                    fp8_dot(w, &xs[..nt], &mut part[..nt]);
                    for (j, v) in o.iter_mut().enumerate() {
                        *v += part[j] * s[(t0 + j) * groups + g] * sw;
                    }
                }
            }
            (LinearWeight::Dense(w), Acts::Dense(x)) => {
                dense_dot(w, row, k, &rows(x, k, t0, t)[..nt], o)
            }
            _ => unreachable!("activations are prepared for the weight kind"),
        }
    }
    if let Some(b) = &lin.bias {
        for v in out.iter_mut() {
            *v += b[row];
        }
    }
}

/// What one Linear did with given inputs: the debug hook behind the W8A8 linear goldens.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearTrace {
    /// `[rows_in, lin.rows]` outputs.
    pub y: Vec<f32>,
    /// Per-row activation scales `s_a` (empty for a dense weight).
    pub x_scale: Vec<f32>,
    /// Activation code values `q_a` (FP8 values, or int8 codes as f32),
    /// `[rows_in, lin.cols]` (empty for a dense weight).
    pub x_q: Vec<f32>,
}

/// Runs `lin` on `x` (`[x.len() / cols, cols]`) through the same code as the forward pass.
pub fn run_linear(lin: &Linear, x: &[f32]) -> Result<LinearTrace> {
    if x.is_empty() || x.len() % lin.cols != 0 {
        return Err(Error::Runtime(format!(
            "{}: input of {} values is not a whole number of rows of {}",
            lin.name,
            x.len(),
            lin.cols
        )));
    }
    let t = x.len() / lin.cols;
    let mut scratch = LinearScratch::default();
    let mut y = vec![0.0; t * lin.rows];
    forward(lin, x, t, &mut y, &mut scratch);
    let (x_scale, x_q) = match lin.weight {
        LinearWeight::Fp8 { .. } => (scratch.s[..t].to_vec(), scratch.q[..x.len()].to_vec()),
        LinearWeight::Fp8Block { block_cols, .. } => (
            scratch.s[..x.len() / block_cols].to_vec(),
            scratch.q[..x.len()].to_vec(),
        ),
        LinearWeight::Int8 { .. } => (
            scratch.s[..t].to_vec(),
            scratch.q8[..x.len()].iter().map(|&c| c as f32).collect(),
        ),
        LinearWeight::Dense(_) => (Vec::new(), Vec::new()),
    };
    Ok(LinearTrace { y, x_scale, x_q })
}
