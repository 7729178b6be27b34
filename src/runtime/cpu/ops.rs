//! The element-wise pieces of the forward pass, in f32, written to round like transformers'
//! f32 forward (fixtures/README.md §6.2): RMSNorm, rotary embedding (HF rotate-half layout,
//! default and llama3 frequencies) and SiLU gating.

use crate::runtime::config::{RopeConfig, RopeScaling};

/// `out = w * (x * rsqrt(mean(x²) + eps))` for each row of width `w.len()`.
/// The mean of squares is summed in f64 and rounded once (torch's pairwise f32 sum is close to
/// that); `rsqrt` is `1 / sqrt` as torch's CPU kernel computes it.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / d as f64) as f32;
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
            // transformers: ~(wavelen < high) & ~(wavelen > low); wavelen is never NaN here.
            let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
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
