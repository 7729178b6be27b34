//! Causal softmax attention with grouped KV heads, over the KV cache.
//!
//! Rounding follows torch's f32 `softmax(q @ kᵀ · scale) @ v`: each dot product is one
//! sequential chain of fused multiply-adds (as BLAS sgemm kernels accumulate), the scale is
//! applied after it, softmax is `exp(x - max) · (1 / sum)`. Matching that order keeps the
//! per-token FP8 activation codes downstream identical to the reference far more often.

use super::dot::has_avx2;
use rayon::prelude::*;

/// Head counts and width.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The KV cache of one layer: `[max_seq, kv_heads * head_dim]` keys and values.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// Attention of `t` new query rows (positions `pos..pos+t`, `q` is `[t, heads*head_dim]`)
/// against cached positions `0..pos+t`. Scratch: `scores` ≥ `heads * (pos+t)`, `out_heads`
/// ≥ `heads * t * head_dim`. Result in `out` `[t, heads*head_dim]`. Parallel over heads.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    shape: AttnShape,
    q: &[f32],
    kv: KvView,
    pos: usize,
    t: usize,
    scores: &mut [f32],
    out_heads: &mut [f32],
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (qw, kvw) = (heads * d, kv_heads * d);
    let group = heads / kv_heads;
    let len = pos + t;
    let scale = (d as f64).powf(-0.5) as f32;
    out_heads[..heads * t * d]
        .par_chunks_mut(t * d)
        .zip(scores[..heads * len].par_chunks_mut(len))
        .enumerate()
        .for_each(|(h, (oh, sc))| {
            let off = (h / group) * d; // GQA: query head h reads kv head h / group
            for i in 0..t {
                let qi = &q[i * qw + h * d..i * qw + (h + 1) * d];
                let n = pos + i + 1; // causal: keys 0..=pos+i
                head_scores(qi, kv.k, kvw, off, scale, &mut sc[..n]);
                softmax(&mut sc[..n]);
                weighted_values(&sc[..n], kv.v, kvw, off, &mut oh[i * d..(i + 1) * d]);
            }
        });
    for h in 0..heads {
        for i in 0..t {
            let src = &out_heads[(h * t + i) * d..(h * t + i + 1) * d];
            out[i * qw + h * d..i * qw + (h + 1) * d].copy_from_slice(src);
        }
    }
}

/// In-place softmax as torch's CPU kernel: `exp(x - max)`, then times `1 / sum`.
fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `out[j] = (Σ_x q[x] · keys[j*stride + off + x]) · scale`, fused multiply-adds in order.
fn head_scores(q: &[f32], keys: &[f32], stride: usize, off: usize, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has FMA (checked above).
        return unsafe { head_scores_fma(q, keys, stride, off, scale, out) };
    }
    head_scores_body(q, keys, stride, off, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_scores_fma(
    q: &[f32],
    keys: &[f32],
    stride: usize,
    off: usize,
    scale: f32,
    out: &mut [f32],
) {
    head_scores_body(q, keys, stride, off, scale, out)
}

/// Four keys at a time: four independent FMA chains keep the FPU busy while each chain stays
/// strictly sequential.
#[inline(always)]
fn head_scores_body(
    q: &[f32],
    keys: &[f32],
    stride: usize,
    off: usize,
    scale: f32,
    out: &mut [f32],
) {
    let d = q.len();
    let key = |j: usize| &keys[j * stride + off..j * stride + off + d];
    let mut blocks = out.chunks_exact_mut(4);
    let mut j = 0;
    for o in &mut blocks {
        let (k0, k1, k2, k3) = (key(j), key(j + 1), key(j + 2), key(j + 3));
        let mut a = [0.0f32; 4];
        for x in 0..d {
            a[0] = q[x].mul_add(k0[x], a[0]);
            a[1] = q[x].mul_add(k1[x], a[1]);
            a[2] = q[x].mul_add(k2[x], a[2]);
            a[3] = q[x].mul_add(k3[x], a[3]);
        }
        for (o, a) in o.iter_mut().zip(a) {
            *o = a * scale;
        }
        j += 4;
    }
    for o in blocks.into_remainder() {
        let kj = key(j);
        *o = q.iter().zip(kj).fold(0.0f32, |a, (x, y)| x.mul_add(*y, a)) * scale;
        j += 1;
    }
}

/// `out[x] = Σ_j p[j] · values[j*stride + off + x]`, fused multiply-adds in order of `j`.
fn weighted_values(p: &[f32], values: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has FMA (checked above).
        return unsafe { weighted_values_fma(p, values, stride, off, out) };
    }
    weighted_values_body(p, values, stride, off, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_values_fma(
    p: &[f32],
    values: &[f32],
    stride: usize,
    off: usize,
    out: &mut [f32],
) {
    weighted_values_body(p, values, stride, off, out)
}

#[inline(always)]
fn weighted_values_body(p: &[f32], values: &[f32], stride: usize, off: usize, out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        let v = &values[j * stride + off..j * stride + off + d];
        for (o, &vx) in out.iter_mut().zip(v) {
            *o = pj.mul_add(vx, *o);
        }
    }
}
