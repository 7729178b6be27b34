//! AWQ's grid search for one mapping and its smoothing, as llm-compressor 0.14's
//! `AWQModifier._compute_best_scale` and `_apply_smoothing` compute them in BF16 on the CPU.
//!
//! Per grid point `(ratio, duo)`, with `x̄` the mean |input| per channel (f32) and `w̄` the
//! mean group-normalised |weight| per input channel of the balance layers (f64):
//! `s = clamp(x̄^ratio / (w̄^(1-ratio) + 1e-4), 1e-4)` with duo scaling (an f64 tensor, since
//! `w̄` is f64), else `s = clamp(x̄^ratio, 1e-4)` (f32); then `s /= sqrt(max(s) · min(s))`,
//! Inf and NaN become 1. Each quantized balance weight becomes `bf16(Q(bf16(W·s)) / s)`
//! (`Q`: fake quantization with `memoryless_minmax` qparams of `bf16(W·s)`), the parent
//! module reruns on the cached inputs, and the loss is torch's BF16 `mse_loss(sum)` per
//! sample (each difference and square rounded to BF16, the sum rounded to BF16), added in
//! f32 and divided by the element count. The first strictly smallest loss wins. The best
//! `s` multiplies the balance weights' columns and divides the smooth layer's output.
//!
//! torch computes `bf16 ∘ f64` ops in f64 and converts to BF16 through f32, which
//! [`mul_round`] and [`div_round`] reproduce (for f32 scales the f64 result rounded to f32
//! is the f32 result: double rounding is innocuous for one operation).

use super::{AwqMapping, Parent, Smooth};
use crate::calibrate::activations::{Activations, Placement};
use crate::calibrate::forward::{
    attention_block, bf16, linear, mlp_block, BfRope, Dims, LayerWeights, NoTaps, Proj, Scratch,
};
use crate::calibrate::outputs::LinearPlan;
use crate::calibrate::smoothquant::Norm;
use crate::checkpoint::DType;
use crate::numerics::{group_qparams, quantize_group, IntParams};
use crate::recipe::{DuoScaling, Strategy};
use crate::{Error, Result};
use rayon::prelude::*;

/// What a mapping's search needs from the run.
pub struct Ctx<'a> {
    pub dims: &'a Dims,
    pub rope: &'a BfRope,
    /// The layer's Linear plans (`None`: not quantized).
    pub plans: &'a [Option<LinearPlan>; 7],
    pub duo: DuoScaling,
    pub n_grid: u64,
    pub progress: &'a dyn Fn(u64),
    /// Tokens of each sample.
    pub tokens: &'a [usize],
    /// Where the parent outputs are kept (as the activations are).
    pub placement: &'a Placement,
}

/// The grid of `(ratio, duo_scaling)` points (`_get_grid_search_params`).
pub fn grid(duo: DuoScaling, n_grid: u64) -> Vec<(f64, bool)> {
    match duo {
        DuoScaling::Both => {
            let n = n_grid / 2;
            (0..n)
                .flat_map(|i| [false, true].map(|d| (i as f64 / (n - 1) as f64, d)))
                .collect()
        }
        DuoScaling::False => (0..n_grid)
            .map(|i| (i as f64 / (n_grid - 1) as f64, false))
            .collect(),
        DuoScaling::True => std::iter::once((0.0, false))
            .chain((0..n_grid - 1).map(|i| (i as f64 / (n_grid - 2) as f64, true)))
            .collect(),
    }
}

/// A parent module's inputs (or outputs) kept for the grid search, one `[tokens, width]`
/// sample each, in the activation store: BF16 bits (exact: every Linear input and every
/// block output the forward pass makes is a BF16 value, as in torch), in RAM or spilled to
/// a scratch file with the activations when the memory plan says so.
pub type Cached = Activations;

/// What happened to one mapping.
pub enum Outcome {
    /// Smoothed with the best scales (f64 values; f32 ones when the best had no duo).
    Smoothed(Vec<f64>),
    /// Skipped, with llm-compressor's warning.
    Skipped(String),
}

/// Searches the best scales of `m` and applies them to `w`. `inputs`: the parent's cached
/// inputs, one per sample; `x_mean`: the mean |input| of the first balance layer.
pub fn smooth_mapping(
    ctx: &Ctx,
    m: &AwqMapping,
    w: &mut LayerWeights,
    inputs: &Cached,
    x_mean: &[f32],
) -> Result<Outcome> {
    let (fp16, finite) = parent_outputs(ctx, m.parent, w, inputs)?;
    if !finite {
        return Ok(Outcome::Skipped(format!(
            "Skipping smooth_layer {}, NaN or inf outputs found during forward pass of the \
             parent module {}",
            m.smooth_name, m.parent_name
        )));
    }
    let orig: Vec<Vec<f32>> = m
        .balance
        .iter()
        .map(|&p| w.linears[p as usize].clone())
        .collect();
    let w_mean = (ctx.duo != DuoScaling::False).then(|| layer_means(ctx, w, &m.balance));
    let mut best: Option<(f64, Vec<f64>)> = None;
    for (ratio, duo) in grid(ctx.duo, ctx.n_grid) {
        let s = scales(x_mean, w_mean.as_deref().filter(|_| duo), ratio);
        for (&p, o) in m.balance.iter().zip(&orig) {
            if let Some(plan) = &ctx.plans[p as usize] {
                w.linears[p as usize] = fake_quantized(o, w.shapes[p as usize], &s, plan)?;
            }
        }
        let loss = mse(ctx, m.parent, w, inputs, &fp16)?;
        if loss < best.as_ref().map_or(f64::INFINITY, |b| b.0) {
            best = Some((loss, s));
        }
    }
    let Some((_, s)) = best else {
        return Err(Error::Calibration(format!(
            "AWQ: no finite loss was found in the grid search of {} (NaN in the forward pass \
             of {})",
            m.smooth_name, m.parent_name
        )));
    };
    for (&p, o) in m.balance.iter().zip(&orig) {
        let cols = w.shapes[p as usize].1;
        w.linears[p as usize] = o
            .iter()
            .enumerate()
            .map(|(i, &x)| mul_round(x, s[i % cols]))
            .collect();
    }
    match m.smooth {
        Smooth::Norm(n) => {
            let g = match n {
                Norm::Input => &mut w.input_norm,
                Norm::Post => &mut w.post_norm,
            };
            for (g, &s) in g.iter_mut().zip(&s) {
                *g = div_round(*g, s);
            }
        }
        Smooth::Linear(p) => {
            // The last `s.len()` output rows (all of them for v_proj and up_proj).
            let (rows, cols) = w.shapes[p as usize];
            let first = rows - s.len();
            let lin = &mut w.linears[p as usize];
            for (r, &s) in (first..rows).zip(&s) {
                for x in &mut lin[r * cols..(r + 1) * cols] {
                    *x = div_round(*x, s);
                }
            }
        }
    }
    Ok(Outcome::Smoothed(s))
}

/// `bf16(x · s)` as torch computes a BF16 tensor times an f64 (or f32) one.
fn mul_round(x: f32, s: f64) -> f32 {
    bf16((x as f64 * s) as f32)
}

/// `bf16(x / s)`, likewise.
fn div_round(x: f32, s: f64) -> f32 {
    bf16((x as f64 / s) as f32)
}

/// Runs `each(sample, scratch)` over every sample, in parallel chunks of one sample per
/// thread (each thread with its own forward buffers), handing the results to `done` in
/// sample order: at most one sample per thread is widened to f32 at once.
fn for_samples<T: Send>(
    n: usize,
    each: impl Fn(usize, &mut Scratch) -> Result<T> + Sync,
    mut done: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let threads = rayon::current_num_threads().clamp(1, n.max(1));
    let mut scratch: Vec<Scratch> = (0..threads).map(|_| Scratch::default()).collect();
    for start in (0..n).step_by(threads) {
        let end = (start + threads).min(n);
        let results: Vec<Result<T>> = scratch[..end - start]
            .par_iter_mut()
            .enumerate()
            .map(|(k, s)| each(start + k, s))
            .collect();
        for (i, r) in (start..end).zip(results) {
            done(i, r?)?;
        }
    }
    Ok(())
}

/// The parent module's outputs on every cached input, with the weights in `w`, and
/// whether they are all finite.
fn parent_outputs(
    ctx: &Ctx,
    parent: Parent,
    w: &LayerWeights,
    inputs: &Cached,
) -> Result<(Cached, bool)> {
    let model = (ctx.dims, ctx.rope);
    let lens = ctx.tokens.iter().map(|t| t * ctx.dims.hidden).collect();
    let mut out = Activations::new(lens, ctx.placement)?;
    let mut finite = true;
    for_samples(
        inputs.len(),
        |i, s| Ok(run_parent(model, parent, w, &inputs.sample(i)?, s)),
        |i, y| {
            finite &= y.iter().all(|v| v.is_finite());
            out.write(i, &y)
        },
    )?;
    (ctx.progress)(inputs.len() as u64);
    Ok((out, finite))
}

/// The loss of the weights in `w` against the unquantized outputs `fp16`
/// (`_compute_loss`: per sample a BF16 sum of BF16 squares, added in f32, over the count).
fn mse(ctx: &Ctx, parent: Parent, w: &LayerWeights, inputs: &Cached, fp16: &Cached) -> Result<f64> {
    let model = (ctx.dims, ctx.rope);
    let mut total = 0f32;
    for_samples(
        inputs.len(),
        |i, s| {
            let got = run_parent(model, parent, w, &inputs.sample(i)?, s);
            let sum: f64 = got
                .iter()
                .zip(fp16.sample(i)?)
                .map(|(&a, b)| {
                    let d = bf16(a - b);
                    bf16(d * d) as f64
                })
                .sum();
            Ok(bf16(sum as f32))
        },
        |_, loss| {
            total += loss;
            Ok(())
        },
    )?;
    (ctx.progress)(inputs.len() as u64);
    let count: usize = (0..fp16.len()).map(|i| fp16.sample_len(i)).sum();
    Ok((total / count as f32) as f64)
}

fn run_parent(
    (d, rope): (&Dims, &BfRope),
    parent: Parent,
    w: &LayerWeights,
    x: &[f32],
    s: &mut Scratch,
) -> Vec<f32> {
    match parent {
        Parent::Attention => {
            attention_block(w, d, rope, x, &mut NoTaps, s);
            s.out().to_vec()
        }
        Parent::Mlp => {
            mlp_block(w, d, x, &mut NoTaps, s);
            s.out().to_vec()
        }
        Parent::Linear(p) => {
            let (o, i) = w.shapes[p as usize];
            let mut y = Vec::new();
            linear(d.cpu, x, w.linear(p), (x.len() / i, o, i), &mut y);
            y
        }
    }
}

/// The columns' chunk of a weight quantized with `plan` (its group, or the whole row).
fn chunk(plan: &LinearPlan, cols: usize) -> usize {
    match (plan.weights.strategy, plan.weights.group_size) {
        (Strategy::Group, Some(g)) if g > 0 => g as usize,
        (Strategy::Tensor, _) => usize::MAX,
        _ => cols,
    }
}

/// `_compute_layer_means`: per input channel, the mean over the balance layers' rows of
/// `bf16(|W| / bf16(max|W in its chunk| + 1e-6))`, summed in f64. Balance layers without
/// a quantization plan are left out, as llm-compressor skips them.
fn layer_means(ctx: &Ctx, w: &LayerWeights, balance: &[Proj]) -> Vec<f64> {
    let cols = w.shapes[balance[0] as usize].1;
    let mut sum = vec![0f64; cols];
    let mut count = 0usize;
    for &p in balance {
        let Some(plan) = &ctx.plans[p as usize] else {
            continue;
        };
        let (rows, cols) = w.shapes[p as usize];
        let lin = w.linear(p);
        if chunk(plan, cols) == usize::MAX {
            let amax = lin.iter().fold(0f32, |m, x| m.max(x.abs()));
            let den = bf16(amax + 1e-6);
            for row in lin.chunks(cols) {
                for (acc, &x) in sum.iter_mut().zip(row) {
                    *acc += bf16(x.abs() / den) as f64;
                }
            }
        } else {
            let c = chunk(plan, cols);
            for row in lin.chunks(cols) {
                for (j0, part) in row.chunks(c).enumerate() {
                    let amax = part.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let den = bf16(amax + 1e-6);
                    for (k, &x) in part.iter().enumerate() {
                        sum[j0 * c + k] += bf16(x.abs() / den) as f64;
                    }
                }
            }
        }
        count += rows;
    }
    sum.iter().map(|&s| s / count as f64).collect()
}

/// `x.pow(e)` of an f32 tensor (the exponent cast to f32; 0 and 1 are exact special cases).
fn pow_f32(x: f32, e: f64) -> f32 {
    match e {
        0.0 => 1.0,
        1.0 => x,
        _ => (x as f64).powf(e as f32 as f64) as f32,
    }
}

fn pow_f64(x: f64, e: f64) -> f64 {
    match e {
        0.0 => 1.0,
        1.0 => x,
        _ => x.powf(e),
    }
}

/// torch's `max()`/`min()` of a tensor: NaN if any element is NaN.
fn extremes<T: Copy + PartialOrd>(v: &[T], nan: impl Fn(T) -> bool) -> Option<(T, T)> {
    let mut it = v.iter().copied();
    let first = it.next()?;
    let (mut lo, mut hi) = (first, first);
    for x in it {
        if nan(x) {
            return Some((x, x));
        }
        if x < lo {
            lo = x;
        }
        if x > hi {
            hi = x;
        }
    }
    if nan(first) {
        return Some((first, first));
    }
    Some((lo, hi))
}

/// One grid point's scales (module docs); `w_mean` is `Some` for a duo-scaling point.
pub fn scales(x_mean: &[f32], w_mean: Option<&[f64]>, ratio: f64) -> Vec<f64> {
    let xp = x_mean.iter().map(|&x| pow_f32(x, ratio));
    let fix = |v: f64| if v.is_finite() { v } else { 1.0 };
    match w_mean {
        Some(wm) => {
            let s: Vec<f64> = xp
                .zip(wm)
                .map(|(x, &w)| clamp_min(x as f64 / (pow_f64(w, 1.0 - ratio) + 1e-4), 1e-4))
                .collect();
            let Some((lo, hi)) = extremes(&s, f64::is_nan) else {
                return s;
            };
            let norm = (hi * lo).sqrt();
            s.iter().map(|&v| fix(v / norm)).collect()
        }
        None => {
            let s: Vec<f32> = xp.map(|x| clamp_min(x, 1e-4f32)).collect();
            let Some((lo, hi)) = extremes(&s, f32::is_nan) else {
                return Vec::new();
            };
            let norm = (hi * lo).sqrt();
            s.iter().map(|&v| fix((v / norm) as f64)).collect()
        }
    }
}

/// `clamp(min=m)`, which keeps NaN.
fn clamp_min<T: PartialOrd + Copy>(x: T, m: T) -> T {
    if x < m {
        m
    } else {
        x
    }
}

/// `bf16(Q(bf16(W·s)) / s)` of a `[rows, cols]` weight: compressed-tensors' fake
/// quantization (`_quantize_dequantize`: `bf16((q - zp) · scale)`) with the qparams of
/// `memoryless_minmax` on the scaled weight.
fn fake_quantized(
    w: &[f32],
    (_, cols): (usize, usize),
    s: &[f64],
    plan: &LinearPlan,
) -> Result<Vec<f32>> {
    let a = &plan.weights;
    let group = match chunk(plan, cols) {
        usize::MAX => {
            return Err(Error::Unsupported(
                "AWQModifier with per-tensor integer weights is not supported yet".into(),
            ))
        }
        g => g,
    };
    let p = IntParams {
        bits: a.num_bits,
        group,
        symmetric: a.symmetric,
    };
    let mut out = vec![0f32; w.len()];
    // Rows are independent: shared among the threads (a grid search quantizes the balance
    // weights 20 times per mapping).
    out.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .for_each_init(
            || (vec![0f32; cols], vec![0u8; group]),
            |(scaled, q), (out, row)| {
                for ((o, &x), &s) in scaled.iter_mut().zip(row).zip(s) {
                    *o = mul_round(x, s);
                }
                for (j0, (part, out)) in scaled.chunks(group).zip(out.chunks_mut(group)).enumerate()
                {
                    let (scale, zp) = group_qparams(DType::BF16, p, part);
                    quantize_group(DType::BF16, true, p, part, scale, zp, &mut q[..part.len()]);
                    for (k, (&c, o)) in q[..part.len()].iter().zip(out).enumerate() {
                        let fq = bf16((c as i8 as f32 - zp) * scale);
                        *o = div_round(fq, s[j0 * group + k]);
                    }
                }
            },
        );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_searches_half_the_grid_with_and_without_duo_scaling() {
        let g = grid(DuoScaling::Both, 20);
        assert_eq!(g.len(), 20);
        assert_eq!(&g[..3], &[(0.0, false), (0.0, true), (1.0 / 9.0, false)]);
        assert_eq!(g[19], (1.0, true));
        let t = grid(DuoScaling::True, 20);
        assert_eq!(
            (t[0], t[1], t[19]),
            ((0.0, false), (0.0, true), (1.0, true))
        );
        assert_eq!(grid(DuoScaling::False, 5)[4], (1.0, false));
    }

    /// Ratio 0 without duo scaling is the identity; ratio 1 is `x̄` normalised so that
    /// `max · min = 1`; a zero activation is clamped to 1e-4 first.
    #[test]
    fn scales_normalise_to_a_unit_geometric_midrange() {
        let x = [4.0f32, 1.0, 0.0];
        assert_eq!(scales(&x, None, 0.0), vec![1.0; 3]);
        let s = scales(&x, None, 1.0);
        let norm = (4.0f32 * 1e-4f32).sqrt();
        assert_eq!(
            s,
            [4.0 / norm, 1.0 / norm, 1e-4f32 / norm].map(|v| v as f64)
        );
        // duo at ratio 0: 1 / (w̄ + 1e-4), normalised in f64.
        let d = scales(&x, Some(&[1.0, 0.25, 0.5]), 0.0);
        let raw: [f64; 3] = [1.0 / 1.0001, 1.0 / 0.2501, 1.0 / 0.5001];
        let n = (raw[1] * raw[0]).sqrt();
        assert_eq!(d, raw.map(|v| v / n));
    }
}
