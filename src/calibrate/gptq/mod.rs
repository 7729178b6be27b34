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
//! BF16) weights to produce the next layer's inputs: errors propagate to later layers
//! (`propagate_error`, default true). In both passes quantization is disabled on the
//! modules (`disable_quantization` until `end_calibration`): the second pass uses the
//! weights GPTQ wrote back ([`GptqResult::dequantized`]) and **no** activation quantization,
//! even for W8A8's dynamic int8 inputs.
//! Layer 0's q/k/v_proj input is `input_layernorm(embed_tokens(ids))`; q/k/v (and gate/up)
//! see the same input, so one [`Hessian`] serves each such group ([`input_slot`]):
//! llm-compressor accumulates one per module, but the same sums of the same products in
//! the same order are the same bits.
//!
//! Bit-exactness: the Hessian is a float sum over samples, so their order matters.
//! llm-compressor feeds them in `LengthAwareSampler` order, `torch.argsort(lengths,
//! descending=True)`, an unstable sort: with `--no-shuffle` and 32 samples of equal length
//! that is 16, 31, 30, …, 17, 0, 15, 14, …, 1 (fewer than 17 equal lengths keep file order).
//! Each sample's `XᵀX` is summed in the order of torch's f32 matmul on an AVX2 CPU (MKL's K
//! blocks, `xtx`), and the damping's mean in torch's order (SmolLM2's layer 0: every
//! Hessian bit-identical; docs/calibration.md).
//! Fed in that order, this module reproduces the fixture's Hessian bit for bit and its
//! codes and scales byte for byte (tests/it/gptq.rs). In that fixture run layer 1's
//! down_proj activations are so large that `XᵀX` overflows f32: llm-compressor falls back
//! to round-to-nearest for that module, and so does [`quantize_weight`].

mod debug_dump;
mod hessian;
mod qparams;
mod solve;
pub(crate) use solve::F64_SOLVE_MAX_COLS;
mod xtx;

pub use hessian::Hessian;

use super::forward::Proj;
use super::torch_dot::TorchCpu;
use crate::recipe::QuantArgs;
use crate::{Error, Result};
use qparams::Grid;
use std::borrow::Cow;

/// Distinct Linear inputs of a decoder layer.
pub const INPUT_SLOTS: usize = 4;

/// Which Hessian a Linear reads: q/k/v_proj share the normed hidden states (slot 0),
/// o_proj has the attention output (1), gate/up_proj share the second normed hidden
/// states (2), down_proj has the gated activations (3).
pub fn input_slot(p: Proj) -> usize {
    match p {
        Proj::Q | Proj::K | Proj::V => 0,
        Proj::O => 1,
        Proj::Gate | Proj::Up => 2,
        Proj::Down => 3,
    }
}

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
    /// Whose torch sums the damping's mean ([`TorchCpu::sum`]).
    pub cpu: TorchCpu,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            block_size: 128,
            dampening_frac: 0.01,
            actorder: true,
            cpu: TorchCpu::default(),
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
    quantize_weight_with(weight, rows, cols, Cow::Borrowed(hessian), options, args)
}

/// [`quantize_weight`], given the Hessian to drop (`Cow::Owned`) as soon as it is in the
/// solver's matrix, or to keep (`Cow::Borrowed`, another Linear reads it too). Each
/// working matrix is dropped the moment the next one is made (docs/calibration.md,
/// "Memory plan").
pub fn quantize_weight_with(
    weight: &[f32],
    rows: usize,
    cols: usize,
    hessian: Cow<'_, Hessian>,
    options: &GptqOptions,
    args: &QuantArgs,
) -> Result<GptqResult> {
    check(weight, rows, cols, &hessian, options)?;
    let grid = Grid::observe(weight, rows, cols, args)?;
    let perm: Vec<usize> = if options.actorder {
        solve::actorder_perm(&hessian.normalized_diagonal(), cols)
    } else {
        (0..cols).collect()
    };
    let mut w = solve::permute_cols(weight, cols, &perm);
    let dump = debug_dump::Dump::from_env(rows, cols);
    if let Some(d) = &dump {
        d.write_f32("hsum", &hessian.sum());
    }
    let h = solve::normalized_matrix(&hessian, &perm);
    drop(hessian);
    let (hinv, rtn_fallback) =
        solve::factorize(h, cols, &mut w, options.dampening_frac, options.cpu)?;
    if let Some(d) = &dump {
        d.write_f32("hinv", &hinv);
    }
    let loss = solve::block_loop(&mut w, cols, &hinv, &grid, &perm, options.block_size);
    drop(hinv);
    if options.actorder {
        w = solve::unpermute_cols(&w, cols, &perm);
    }
    let dequantized: Vec<u16> = w
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    drop(w);
    if let Some(d) = &dump {
        d.write_bf16("wq", &dequantized);
    }
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
