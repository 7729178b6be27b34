//! llm-compressor 0.14's activation observers (`llmcompressor/observers/min_max.py`) on BF16
//! values, and the FP8 per-tensor scale compressed-tensors' `calculate_qparams` derives from
//! them.

use super::forward::bf16;
use crate::checkpoint::DType;
use crate::numerics;

/// A running minimum and maximum (`static_minmax`: the min/max of every value seen).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StaticMinMax {
    range: Option<(f32, f32)>,
}

impl StaticMinMax {
    pub fn observe(&mut self, x: &[f32]) {
        let Some(r) = min_max(x) else { return };
        self.range = Some(match self.range {
            None => r,
            Some((lo, hi)) => (lo.min(r.0), hi.max(r.1)),
        });
    }

    /// `(min, max)` of everything observed, `None` before any value.
    pub fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
}

/// `minmax`: a moving average of each observation's min and max,
/// `new = old·(1 − c) + observed·c` with `c` = `averaging_constant` (0.01), each product and
/// the sum rounded to BF16 as torch does on BF16 tensors. The first observation is taken as
/// it is. llm-compressor uses it for the K/V-cache states (their `observer` is null).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovingMinMax {
    constant: f32,
    range: Option<(f32, f32)>,
}

impl Default for MovingMinMax {
    fn default() -> Self {
        MovingMinMax {
            constant: 0.01,
            range: None,
        }
    }
}

impl MovingMinMax {
    pub fn observe(&mut self, x: &[f32]) {
        let Some((lo, hi)) = min_max(x) else { return };
        let c = self.constant;
        // Python's `1.0 - 0.01` is a double; torch hands the scalar to the BF16 kernel as f32.
        let keep = (1.0f64 - c as f64) as f32;
        let lerp = |old: f32, new: f32| bf16(bf16(old * keep) + bf16(new * c));
        self.range = Some(match self.range {
            None => (lo, hi),
            Some((old_lo, old_hi)) => (lerp(old_lo, lo), lerp(old_hi, hi)),
        });
    }

    pub fn range(&self) -> Option<(f32, f32)> {
        self.range
    }
}

/// `(min, max)` of a non-empty slice; NaN propagates into the result (as `torch.amin`).
fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    if x.is_empty() {
        return None;
    }
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in x {
        if v.is_nan() {
            return Some((f32::NAN, f32::NAN));
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    Some((lo, hi))
}

/// The symmetric FP8 E4M3 per-tensor scale of an observed range, in BF16:
/// `bf16(max(|min(lo, 0)|, max(hi, 0)) / 448)`, a zero scale replaced by BF16's eps.
pub fn fp8_scale(range: (f32, f32)) -> f32 {
    let absmax = (-range.0.min(0.0)).max(range.1.max(0.0));
    numerics::fp8_scale(DType::BF16, absmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_minmax_keeps_the_extremes() {
        let mut o = StaticMinMax::default();
        o.observe(&[1.0, -2.0]);
        o.observe(&[0.5, 3.0]);
        assert_eq!(o.range(), Some((-2.0, 3.0)));
    }

    #[test]
    fn moving_minmax_averages_in_bf16() {
        let mut o = MovingMinMax::default();
        o.observe(&[-1.0, 1.0]);
        o.observe(&[-3.0, 3.0]);
        // 1·0.99 → bf16 0.98828125; 3·0.01 → bf16 0.030029296875; sum 1.018310546875 →
        // bf16 1.015625.
        assert_eq!(o.range(), Some((-1.015625, 1.015625)));
    }

    #[test]
    fn fp8_scale_is_absmax_over_448_in_bf16() {
        assert_eq!(fp8_scale((-448.0, 10.0)), 1.0);
        assert_eq!(fp8_scale((0.0, 0.0)), 0.0078125);
    }
}
