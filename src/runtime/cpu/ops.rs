//! The non-Linear pieces of the forward pass, in f32, written to round like transformers'
//! f32 forward (fixtures/README.md §6.2): RMSNorm, rotary embedding (HF rotate-half layout,
//! default and llama3 frequencies), SiLU gating and causal GQA attention.

use crate::runtime::config::{RopeConfig, RopeScaling};
use rayon::prelude::*;

/// `out = w * (x * rsqrt(mean(x²) + eps))` for each row of width `w.len()`.
/// The mean of squares is summed in f64 and rounded once (torch's pairwise f32 sum is close to
/// that); `rsqrt` is `1 / sqrt` as torch's CPU kernel computes it.
pub fn sum_sq(xr: &[f32]) -> f32 {
    match std::env::var("QF_SUM").as_deref() {
        Ok("seq") => xr.iter().map(|&v| v * v).sum(),
        Ok("torch8") => torch_sum(xr, 8),
        Ok("torch16") => torch_sum(xr, 16),
        _ => { let s: f64 = xr.iter().map(|&v| (v * v) as f64).sum(); s as f32 }
    }
}

fn torch_sum(xr: &[f32], lanes: usize) -> f32 {
    let sq: Vec<f32> = xr.iter().map(|&v| v * v).collect();
    let n = sq.len();
    let vec_size = n / lanes;
    // row_sum over vectors with ilp 4
    let size_ilp = vec_size / 4;
    let vload = |i: usize| -> Vec<f32> { sq[i * lanes..(i + 1) * lanes].to_vec() };
    let add = |a: &mut Vec<f32>, b: &Vec<f32>| { for (x, y) in a.iter_mut().zip(b) { *x += *y; } };
    let zero = vec![0.0f32; lanes];
    let mut acc = vec![vec![zero.clone(); 4]; 4]; // [level][k]
    let ceil_log2 = |x: usize| -> usize { if x <= 1 { 0 } else { (usize::BITS - (x - 1).leading_zeros()) as usize } };
    let level_power = std::cmp::max(4, ceil_log2(size_ilp) / 4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut i = 0;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for k in 0..4 { let v = vload(i * 4 + k); add(&mut acc[0][k], &v); }
            i += 1;
        }
        for j in 1..4 {
            for k in 0..4 { let a = acc[j - 1][k].clone(); add(&mut acc[j][k], &a); acc[j - 1][k] = zero.clone(); }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 { break; }
        }
    }
    while i < size_ilp { for k in 0..4 { let v = vload(i * 4 + k); add(&mut acc[0][k], &v); } i += 1; }
    for j in 1..4 { for k in 0..4 { let a = acc[j][k].clone(); add(&mut acc[0][k], &a); } }
    let mut p0 = acc[0][0].clone();
    for i in size_ilp * 4..vec_size { let v = vload(i); add(&mut p0, &v); }
    for k in 1..4 { let a = acc[0][k].clone(); add(&mut p0, &a); }
    let mut fin = 0.0f32;
    for k in vec_size * lanes..n { fin += sq[k]; }
    for v in p0 { fin += v; }
    fin
}

pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = sum_sq(xr) / d as f32;
        let r = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    }
}

/// [`rmsnorm`] in place (Qwen3's per-head q/k norms).
pub fn rmsnorm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / d as f64) as f32;
        let r = 1.0 / (mean + eps).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = g * (*v * r);
        }
    }
}

/// `gate = silu(gate) * up`, with torch's `x / (1 + exp(-x))`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `inv_freq[i]`, `i < head_dim/2`, computed in f32 the way transformers does.
pub fn inv_freq(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let theta = rope.theta as f32;
    let default: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: old_ctx,
    } = rope.scaling
    else {
        return default;
    };
    // transformers' _compute_llama3_parameters, op by op in f32 (Python scalars are rounded
    // to f32 when they meet an f32 tensor; `a / tensor` is `tensor.reciprocal() * a`).
    let low_wavelen = (old_ctx / low_freq_factor) as f32;
    let high_wavelen = (old_ctx / high_freq_factor) as f32;
    let (factor32, lo32) = (factor as f32, low_freq_factor as f32);
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    default
        .into_iter()
        .map(|inv| {
            let wavelen = (1.0 / inv) * two_pi;
            let inv_l = if wavelen > low_wavelen {
                inv / factor32
            } else {
                inv
            };
            let smooth = ((1.0 / wavelen) * old_ctx as f32 - lo32)
                / (high_freq_factor - low_freq_factor) as f32;
            let smoothed = (1.0 - smooth) * inv_l / factor32 + smooth * inv_l;
            let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
            if medium {
                smoothed
            } else {
                inv_l
            }
        })
        .collect()
}

/// Precomputed `cos` / `sin` of `pos · inv_freq[i]` for every position up to `max_seq`,
/// `[max_seq, head_dim/2]` each.
#[derive(Debug, Clone)]
pub struct RopeTables {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTables {
    pub fn new(rope: &RopeConfig, head_dim: usize, max_seq: usize) -> RopeTables {
        let inv = inv_freq(rope, head_dim);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq * half);
        let mut sin = Vec::with_capacity(max_seq * half);
        for p in 0..max_seq {
            for &f in &inv {
                // The angle is an f32 product as in torch; cos/sin of it correctly rounded.
                let a = (p as f32 * f) as f64;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTables { half, cos, sin }
    }

    /// Rotates every head (`head_dim` wide) of the rows of `x` (`[t, heads*head_dim]`), row
    /// `i` at position `pos + i`: `x·cos + rotate_half(x)·sin`.
    pub fn apply(&self, x: &mut [f32], width: usize, pos: usize) {
        let h = self.half;
        for (i, row) in x.chunks_exact_mut(width).enumerate() {
            let c = &self.cos[(pos + i) * h..(pos + i + 1) * h];
            let s = &self.sin[(pos + i) * h..(pos + i + 1) * h];
            for head in row.chunks_exact_mut(2 * h) {
                let (x1, x2) = head.split_at_mut(h);
                for j in 0..h {
                    let (a, b) = (x1[j], x2[j]);
                    x1[j] = a * c[j] + -b * s[j];
                    x2[j] = b * c[j] + a * s[j];
                }
            }
        }
    }
}

/// Shapes for [`attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal softmax attention of `t` new query rows (positions `pos..pos+t`) against the cached
/// keys/values of positions `0..pos+t`. `q`: `[t, heads*head_dim]`; `k_cache`, `v_cache`:
/// `[max_seq, kv_heads*head_dim]`; `scores`: scratch of at least `heads * (pos+t)`; `out_heads`:
/// scratch `[heads, t, head_dim]`; result in `out` `[t, heads*head_dim]`. Parallel over heads.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    shape: AttnShape,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
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
            let kh = h / group; // GQA: kv heads repeated (repeat_interleave)
            for i in 0..t {
                let qi = &q[i * qw + h * d..i * qw + (h + 1) * d];
                let n = pos + i + 1; // causal: keys 0..=pos+i
                for (j, s) in sc[..n].iter_mut().enumerate() {
                    let kj = &k_cache[j * kvw + kh * d..j * kvw + (kh + 1) * d];
                    *s = qi.iter().zip(kj).fold(0.0f32, |acc, (a, b)| a.mul_add(*b, acc)) * scale;
                }
                softmax(&mut sc[..n]);
                let o = &mut oh[i * d..(i + 1) * d];
                o.fill(0.0);
                for (j, &p) in sc[..n].iter().enumerate() {
                    let vj = &v_cache[j * kvw + kh * d..j * kvw + (kh + 1) * d];
                    for (ov, &vv) in o.iter_mut().zip(vj) {
                        *ov = p.mul_add(vv, *ov);
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1's published frequencies for theta 500000, head_dim 128 (spot values).
    #[test]
    fn llama3_inv_freq_regions() {
        let rope = RopeConfig {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let scaled = inv_freq(&rope, 128);
        let plain = inv_freq(
            &RopeConfig {
                theta: 500000.0,
                scaling: RopeScaling::None,
            },
            128,
        );
        assert_eq!(scaled[0], plain[0]); // high frequency: unchanged
        assert_eq!(scaled[63], plain[63] / 8.0); // low frequency: divided by factor
        let mid = (0..64).filter(|&i| scaled[i] != plain[i] && scaled[i] != plain[i] / 8.0);
        assert!(mid.count() > 0, "some frequencies are blended");
    }
}
