//! `softmax(x · scale)` in place for the fast prefill's attention rows
//! ([`super::prefill::attention_gemm`]): `exp(x - max) · (1 / sum)` as torch's CPU kernel, eight
//! lanes at a time with AVX2. The vector `exp` is the Cephes polynomial (as in torch's and
//! SLEEF's float kernels: a few ulp from libm's), and the sum runs in eight partial sums, so
//! the result differs from the scalar form only by f32 rounding. Not used by `verify`/`bench`.

#[cfg(target_arch = "x86_64")]
use super::dot::has_avx2;

/// In-place `softmax(x · scale)`.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2::softmax_scaled(x, scale) };
    }
    scalar(x, scale)
}

fn scalar(x: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter_mut() {
        *v *= scale;
        max = max.max(*v);
    }
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_scaled(x: &mut [f32], scale: f32) {
        let n8 = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        let s = _mm256_set1_ps(scale);
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..n8).step_by(8) {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), s);
            _mm256_storeu_ps(p.add(i), v);
            m = _mm256_max_ps(m, v);
        }
        let mut max = hmax(m);
        for v in &mut x[n8..] {
            *v *= scale;
            max = max.max(*v);
        }
        let mv = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        for i in (0..n8).step_by(8) {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut sum = hsum(acc);
        for v in &mut x[n8..] {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        for i in (0..n8).step_by(8) {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), iv));
        }
        for v in &mut x[n8..] {
            *v *= inv;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let mut a = [0.0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let mut a = [0.0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().sum()
    }

    /// Cephes `expf`: `2^n · p(r)` with `x = n·ln2 + r`, `|r| ≤ ln2/2`; inputs below
    /// -88.38 give ~0 (softmax inputs here are ≤ 0).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(
            _mm256_min_ps(x, _mm256_set1_ps(88.376_26)),
            _mm256_set1_ps(-88.376_26),
        );
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        // r = x - n·ln2, ln2 split in two for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD form gives the scalar one's probabilities to f32 rounding, over rows with
    /// and without a tail, a wide range of values (down to underflow) and a negative scale.
    #[test]
    fn softmax_matches_the_scalar_form() {
        for (len, spread, scale) in [
            (1, 1.0, 0.125),
            (7, 3.0, 1.0),
            (8, 30.0, 0.5),
            (203, 200.0, 1.0),
            (64, 5.0, -2.0),
        ] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * spread)
                .collect();
            let (mut want, mut got) = (x.clone(), x.clone());
            scalar(&mut want, scale);
            softmax_scaled(&mut got, scale);
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w - g).abs() <= 1e-6 * w.max(1e-30) + 1e-37,
                    "len {len}: {w} vs {g}"
                );
            }
            let total: f32 = got.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "len {len}: sums to {total}");
        }
    }
}
