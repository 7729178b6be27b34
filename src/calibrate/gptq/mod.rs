//! GPTQ (llm-compressor 0.14 `GPTQModifier`): the Hessian of a Linear's inputs, accumulated
//! over calibration samples, and the column-by-column quantization that compensates each
//! column's rounding error in the columns not yet quantized.
//!
//! The steps, as llm-compressor 0.14.0.1 runs them (`modifiers/gptq/{base,helpers,
//! gptq_quantize}.py`, compressed-tensors 0.19 `fake_quantize`):
//!
//! 1. [`Hessian`]: a forward hook on each target Linear sees its input (BF16, the output of
//!    the previous module) and adds `(√2·x)ᵀ(√2·x)` in f32, counting one per batch (one
//!    calibration sample). GPTQ uses `H / nsamples`.
//! 2. Scales and zero points come from the weight observer (`memoryless_minmax`) on the
//!    **original** weight, before GPTQ: they are the round-to-nearest scales, with or
//!    without activation ordering (`numerics::group_qparams`, `numerics::fp8_scale`).
//! 3. Activation ordering: `static` and `weight` are aliases (compressed-tensors
//!    `ActivationOrdering`); both permute the columns by decreasing `diag(H)`, and each
//!    column keeps the scale of its original group. `group`/`dynamic` are rejected.
//! 4. Dead columns (`diag(H) == 0`) are zeroed and get a diagonal of 1; then
//!    `diag += dampening_frac · mean(diag)`; `Hinv = chol(chol_inverse(chol(H)))ᵀ` (upper).
//!    If `H` is not positive definite llm-compressor uses the identity for `Hinv`: the
//!    module is rounded to nearest and a warning names it ([`GptqResult::rtn_fallback`]).
//! 5. Blocks of `block_size` columns: each column is fake-quantized (`w / s (+ zp)` in f32,
//!    clamp, round; `(q - zp) · s` in BF16), its error `(w - q) / Hinv[j, j]` corrects the
//!    later columns of the block, and the block's errors correct all later columns.
//! 6. The fake-quantized weight is written back into the module in BF16 (it is exact in
//!    BF16); at save time the compressor codes it again with the same scales, which gives
//!    the stored codes ([`GptqResult::codes`]).
//!
//! What the calibration pipeline must feed (llm-compressor 0.14's sequential pipeline, the
//! default for these recipes): the samples go through one decoder layer at a time. For a
//! layer it runs the calibration forward with hooks (all Hessians of the layer accumulate
//! in this pass: o_proj and down_proj see activations computed with the **original**
//! q/k/v/gate/up weights, since nothing is quantized until the pass ends), then quantizes
//! every Linear of the layer, then runs the layer again with the quantized (fake-quantized
//! BF16) weights to produce the next layer's inputs: errors propagate to later layers.

mod hessian;
mod qparams;
mod solve;

pub use hessian::Hessian;

use crate::recipe::QuantArgs;
use crate::{Error, Result};
use qparams::Grid;

/// `GPTQModifier`'s own arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Columns per block of the error propagation (`block_size`, default 128).
    pub block_size: usize,
    /// Fraction of the mean diagonal added to it (`dampening_frac`, default 0.01).
    pub dampening_frac: f64,
    /// Activation ordering (`actorder: static` — the default — or `weight`; they are the
    /// same). `false` for `actorder: null`.
    pub actorder: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            block_size: 128,
            dampening_frac: 0.01,
            actorder: true,
        }
    }
}

/// Whether an `actorder` value orders the columns: `static`/`weight` yes, `None` no;
/// `group`/`dynamic` were removed from compressed-tensors and are refused as it does.
pub fn actorder_enabled(value: Option<&str>) -> Result<bool> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(false),
        Some("static") | Some("weight") => Ok(true),
        Some(v @ ("group" | "dynamic")) => Err(Error::Calibration(format!(
            "actorder='{v}' has been removed. Consider using actorder='weight' or \
             actorder=None instead."
        ))),
        Some(v) => Err(Error::Calibration(format!(
            "Invalid activation ordering {v}. Only 'weight' and 'static' are supported for GPTQ."
        ))),
    }
}

/// One quantized weight, in compressed-tensors' layout (unpacked).
#[derive(Debug, Clone, PartialEq)]
pub struct GptqResult {
    /// `rows × cols` codes: `i8` bytes for int (4-bit ones still to pack with
    /// `numerics::pack::pack_columns`), E4M3 bytes for FP8.
    pub codes: Vec<u8>,
    /// `weight_scale` as BF16 bits: `rows × groups` (`rows × 1` per channel, one value per
    /// tensor).
    pub scales: Vec<u16>,
    /// `weight_zero_point` (same shape as `scales`; all 0 when symmetric).
    pub zero_points: Vec<i8>,
    /// The fake-quantized weight (BF16 bits, `rows × cols`) that llm-compressor writes back
    /// into the module: the next forward pass of the layer uses it.
    pub dequantized: Vec<u16>,
    /// GPTQ's loss `Σ err² / 2` (llm-compressor logs it).
    pub loss: f64,
    /// The Hessian was not positive definite: the weight was rounded to nearest, as
    /// llm-compressor does (it warns: "Hessian inversion failed ... quantized with
    /// round-to-nearest instead of GPTQ").
    pub rtn_fallback: bool,
}

/// GPTQ of one Linear weight (`rows × cols`, row-major, BF16 values widened to f32) with
/// the Hessian of its inputs and the weight's quantization args.
pub fn quantize_weight(
    weight: &[f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    options: &GptqOptions,
    args: &QuantArgs,
) -> Result<GptqResult> {
    check(weight, rows, cols, hessian, options)?;
    let grid = Grid::observe(weight, rows, cols, args)?;
    let mut h = hessian.normalized();
    let (mut w, perm) = if options.actorder {
        let perm = solve::actorder_perm(&h, cols);
        h = solve::permute_square(&h, cols, &perm);
        (solve::permute_cols(weight, cols, &perm), perm)
    } else {
        (weight.to_vec(), (0..cols).collect())
    };
    let (hinv, rtn_fallback) = solve::factorize(&h, cols, &mut w, options.dampening_frac)?;
    drop(h);
    let loss = solve::block_loop(&mut w, cols, &hinv, &grid, &perm, options.block_size);
    if options.actorder {
        w = solve::unpermute_cols(&w, cols, &perm);
    }
    let dequantized: Vec<u16> = w
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    Ok(GptqResult {
        codes: grid.codes(&dequantized),
        scales: grid.scale_bits(),
        zero_points: grid.zero_points(),
        dequantized,
        loss,
        rtn_fallback,
    })
}

fn check(
    weight: &[f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    options: &GptqOptions,
) -> Result<()> {
    let fail = |m: String| Err(Error::Calibration(format!("GPTQ: {m}")));
    if rows.checked_mul(cols) != Some(weight.len()) || cols == 0 {
        return fail(format!(
            "{} weights do not make a [{rows}, {cols}] matrix",
            weight.len()
        ));
    }
    if hessian.cols() != cols {
        return fail(format!(
            "a Hessian of {} features for {cols} columns",
            hessian.cols()
        ));
    }
    if hessian.nsamples() == 0 {
        return fail("no calibration samples reached this module".to_string());
    }
    let damp_ok = options.dampening_frac.is_finite() && options.dampening_frac >= 0.0;
    if options.block_size == 0 || !damp_ok {
        return fail(format!(
            "block_size {} and dampening_frac {} (need > 0 and >= 0)",
            options.block_size, options.dampening_frac
        ));
    }
    if weight.iter().any(|x| !x.is_finite()) {
        return fail("the weight holds NaN or Inf".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
