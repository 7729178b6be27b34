//! Dot products of one weight row with up to [`TB`] activation rows: the inner loop of every
//! matmul. An AVX2+FMA+F16C version is picked at run time when the CPU has it; the portable
//! version is the reference and the fallback (FP8 results are identical bit for bit).
//!
//! FP8 rows are accumulated **exactly**: every E4M3 value is a multiple of 2^-9 with
//! |v| ≤ 448, so each product `q_a · q_w` is exact and their sum is exact in f64 (for
//! K ≤ 2^17). Rounding the f64 sum once to f32 gives the correctly rounded dot product, the
//! same bits in every order, on every CPU and thread count: the W8A8 goldens are bit-exact
//! targets. The activation codes come in as f64 values (converted once per matmul, see
//! [`prepare_fp8_acts`]); the AVX2 kernel turns weight codes into f64 with integer shifts
//! only. INT8 rows ([`int8_dot`]) accumulate in i32, exactly, as vLLM's int8 GEMMs do.
//! Dense rows (BF16/F16/F32 weights) accumulate in f32.

use crate::numerics::e4m3_to_f32;
use crate::runtime::weights::Dense;
#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

/// Activation rows handled together, so each weight element is decoded once per block.
pub const TB: usize = 4;

/// True when the CPU has AVX2, FMA and F16C (checked once) and `QFORGE_NO_SIMD` is not set
/// (that variable forces the portable kernels, to test them on any machine).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var_os("QFORGE_NO_SIMD").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Writes the activation code values `q` in the form [`fp8_dot`] reads (f64, scaled by a power
/// of two that depends on the kernel in use).
pub fn prepare_fp8_acts(q: &[f32], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    let scale = if has_avx2() { avx2::ACT_SCALE } else { 1.0 };
    #[cfg(not(target_arch = "x86_64"))]
    let scale = 1.0;
    for (o, &v) in out.iter_mut().zip(q) {
        *o = v as f64 * scale;
    }
}

/// `out[j] = Σ_k q_w[k] · a_j[k]` for `j < xs.len() ≤ TB`, exact (see module docs), where
/// `xs` are activation code values prepared by [`prepare_fp8_acts`].
pub fn fp8_dot(codes: &[u8], xs: &[&[f64]], out: &mut [f32]) {
    check_args(codes.len(), xs, out);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above); `check_args` bounds `xs`.
        unsafe {
            match xs.len() {
                1 => avx2::fp8_dot_one(codes, xs[0], out),
                2 => avx2::fp8_dot::<2>(codes, xs, out),
                3 => avx2::fp8_dot::<3>(codes, xs, out),
                _ => avx2::fp8_dot::<4>(codes, xs, out),
            }
        }
        return;
    }
    fp8_dot_portable(codes, xs, out)
}

/// `out[j] = Σ_k w[k] · a_j[k]` for `j < xs.len() ≤ TB`, in i32 and exact: every product is at
/// most 128·128 = 2^14 in magnitude, so no sum of fewer than 2^17 terms can overflow (the
/// longest Linear of a 70B model has K = 28672). Integer sums do not depend on order, so the
/// AVX2 build of the same loop gives the same bits.
pub fn int8_dot(codes: &[i8], xs: &[&[i8]], out: &mut [i32]) {
    assert!(
        xs.len() <= TB && xs.len() <= out.len() && xs.iter().all(|x| x.len() >= codes.len()),
        "int8_dot: bad arguments"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above); the body is safe code.
        unsafe { int8_dot_avx2(codes, xs, out) };
        return;
    }
    int8_dot_portable(codes, xs, out)
}

/// [`int8_dot_portable`] compiled for AVX2 (LLVM vectorizes it with `vpmaddwd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn int8_dot_avx2(codes: &[i8], xs: &[&[i8]], out: &mut [i32]) {
    int8_dot_portable(codes, xs, out)
}

#[inline(always)]
fn int8_dot_portable(codes: &[i8], xs: &[&[i8]], out: &mut [i32]) {
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        *o = codes
            .iter()
            .zip(x.iter())
            .map(|(&w, &a)| w as i32 * a as i32)
            .sum();
    }
}

/// The portable exact FP8 dot product (activations unscaled).
fn fp8_dot_portable(codes: &[u8], xs: &[&[f64]], out: &mut [f32]) {
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        let mut acc = 0.0f64;
        for (&c, &a) in codes.iter().zip(x.iter()) {
            acc += e4m3_to_f32(c) as f64 * a; // exact product, exact sum
        }
        *o = acc as f32;
    }
}

/// `out[j] = Σ_k w[row, k] · xs[j][k]` in f32 for a dense weight row `row` of width `k`.
pub fn dense_dot(w: &Dense, row: usize, k: usize, xs: &[&[f32]], out: &mut [f32]) {
    let range = row * k..(row + 1) * k;
    check_args(k, xs, out);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        unsafe {
            match w {
                Dense::Bf16(v) => avx2::dense::<{ avx2::BF16 }>(v[range].as_ptr() as _, k, xs, out),
                Dense::F16(v) => avx2::dense::<{ avx2::F16 }>(v[range].as_ptr() as _, k, xs, out),
                Dense::F32(v) => avx2::dense::<{ avx2::F32 }>(v[range].as_ptr() as _, k, xs, out),
            }
        }
        return;
    }
    match w {
        Dense::Bf16(v) => dense_dot_portable(&v[range], bf16_to_f32, xs, out),
        Dense::F16(v) => dense_dot_portable(&v[range], f16_to_f32, xs, out),
        Dense::F32(v) => dense_dot_portable(&v[range], |x: f32| x, xs, out),
    }
}

/// The SIMD kernels read `k` elements of every activation row through raw pointers: these
/// bounds are what makes that sound (a violation is a bug in the caller, hence the panic).
fn check_args<T>(k: usize, xs: &[&[T]], out: &[f32]) {
    assert!(xs.len() <= TB && out.len() >= xs.len());
    assert!(xs.iter().all(|x| x.len() >= k));
}

/// BF16 bits → f32 (exact).
pub fn bf16_to_f32(bits: u16) -> f32 {
    crate::numerics::convert::bf16_bits_to_f32(bits)
}

/// F16 bits → f32 (exact).
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

fn dense_dot_portable<T: Copy>(w: &[T], conv: impl Fn(T) -> f32, xs: &[&[f32]], out: &mut [f32]) {
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        *o = w.iter().zip(x.iter()).map(|(&w, &a)| conv(w) * a).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::numerics::e4m3_to_f32;
    use std::arch::x86_64::*;

    /// Activations are stored times 2^1000 for this kernel (see [`decode16`]).
    pub const ACT_SCALE: f64 = f64::from_bits((1023 + 1000) << 52);
    /// `2^-1016 · 2^1000 · 2^16 = 1`: what undoes both scalings of a product.
    const OUT_SCALE: f64 = 65536.0;

    /// 16 codes → their values times 2^-1016 as f64, exactly and without any conversion
    /// instruction: the sign-extended code shifted left by 49 puts the E4M3 exponent and
    /// mantissa into the low bits of the f64 exponent and the top of its mantissa (exponent
    /// bias 1023 instead of 7; E4M3 subnormals become f64 subnormals) and its sign at bit 63.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode16(p: *const u8) -> [__m256d; 4] {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm256_set1_epi64x(0x80FE_0000_0000_0000u64 as i64);
        let widen = |v: __m128i| {
            let bits = _mm256_slli_epi64(_mm256_cvtepi8_epi64(v), 49);
            _mm256_castsi256_pd(_mm256_and_si256(bits, mask))
        };
        [
            widen(raw),
            widen(_mm_srli_si128(raw, 4)),
            widen(_mm_srli_si128(raw, 8)),
            widen(_mm_srli_si128(raw, 12)),
        ]
    }

    /// The lanes of `acc` summed, plus the exact tail `k16..`, unscaled and rounded once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256d, codes: &[u8], x: &[f64], k16: usize) -> f32 {
        let mut lanes = [0.0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), acc);
        let mut total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
        let w_scale = f64::from_bits((1023 - 1016) << 52); // 2^-1016, as decode16 scales
        for (&c, &a) in codes[k16..].iter().zip(&x[k16..codes.len()]) {
            total += (e4m3_to_f32(c) as f64 * w_scale) * a;
        }
        (total * OUT_SCALE) as f32
    }

    /// Exact FP8 dot products against `NT ≥ 2` activation rows (f64 fused multiply-adds of
    /// exact products are exact; every scaling is by a power of two, hence exact).
    /// Two accumulators per row: with several rows that is enough independent chains.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn fp8_dot<const NT: usize>(codes: &[u8], xs: &[&[f64]], out: &mut [f32]) {
        let k16 = codes.len() / 16 * 16;
        let mut acc = [[_mm256_setzero_pd(); 2]; NT];
        let mut i = 0;
        while i < k16 {
            let w = decode16(codes.as_ptr().add(i));
            for j in 0..NT {
                let x = xs[j].as_ptr().add(i);
                for (m, wm) in w.iter().enumerate() {
                    let a = &mut acc[j][m & 1];
                    *a = _mm256_fmadd_pd(*wm, _mm256_loadu_pd(x.add(4 * m)), *a);
                }
            }
            i += 16;
        }
        for j in 0..NT {
            out[j] = finish(_mm256_add_pd(acc[j][0], acc[j][1]), codes, xs[j], k16);
        }
    }

    /// [`fp8_dot`] for one activation row (decode), with four accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn fp8_dot_one(codes: &[u8], x: &[f64], out: &mut [f32]) {
        let k16 = codes.len() / 16 * 16;
        let mut acc = [_mm256_setzero_pd(); 4];
        let mut i = 0;
        while i < k16 {
            let w = decode16(codes.as_ptr().add(i));
            let xp = x.as_ptr().add(i);
            for (m, wm) in w.iter().enumerate() {
                acc[m] = _mm256_fmadd_pd(*wm, _mm256_loadu_pd(xp.add(4 * m)), acc[m]);
            }
            i += 16;
        }
        let sum = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
        out[0] = finish(sum, codes, x, k16);
    }

    /// Element kinds of a dense row, as const generic parameters.
    pub const BF16: u8 = 0;
    pub const F16: u8 = 1;
    pub const F32: u8 = 2;

    /// Loads 8 elements of kind `KIND` starting at element `i` of `p`, widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load<const KIND: u8>(p: *const u8, i: usize) -> __m256 {
        match KIND {
            BF16 => {
                let v = _mm_loadu_si128(p.add(2 * i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
            }
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i)),
            _ => _mm256_loadu_ps(p.add(4 * i) as *const f32),
        }
    }

    /// f32 dot products of a dense row of `k` elements of kind `KIND` at `w`, two accumulators
    /// per activation row to hide the FMA latency.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dense<const KIND: u8>(w: *const u8, k: usize, xs: &[&[f32]], out: &mut [f32]) {
        match xs.len() {
            1 => dense_dot::<KIND, 1>(w, k, xs, out),
            2 => dense_dot::<KIND, 2>(w, k, xs, out),
            3 => dense_dot::<KIND, 3>(w, k, xs, out),
            _ => dense_dot::<KIND, 4>(w, k, xs, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dense_dot<const KIND: u8, const NT: usize>(
        w: *const u8,
        k: usize,
        xs: &[&[f32]],
        out: &mut [f32],
    ) {
        let k16 = k / 16 * 16;
        let k8 = k / 8 * 8;
        let nt = NT;
        let mut a0 = [_mm256_setzero_ps(); NT];
        let mut a1 = [_mm256_setzero_ps(); NT];
        let mut i = 0;
        while i < k16 {
            let w0 = load::<KIND>(w, i);
            let w1 = load::<KIND>(w, i + 8);
            for j in 0..nt {
                let x = xs[j].as_ptr().add(i);
                a0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), a0[j]);
                a1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), a1[j]);
            }
            i += 16;
        }
        if i < k8 {
            let w0 = load::<KIND>(w, i);
            for j in 0..nt {
                a0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[j].as_ptr().add(i)), a0[j]);
            }
        }
        // The last k % 8 elements: decode them from a zero-padded copy.
        let size = if KIND == F32 { 4 } else { 2 };
        let mut padded = [0u8; 32];
        std::ptr::copy_nonoverlapping(w.add(k8 * size), padded.as_mut_ptr(), (k - k8) * size);
        let mut tail = [0.0f32; 8];
        _mm256_storeu_ps(tail.as_mut_ptr(), load::<KIND>(padded.as_ptr(), 0));
        for j in 0..nt {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0[j], a1[j]));
            let mut acc: f32 = lanes.iter().sum();
            for (t, &x) in tail.iter().zip(&xs[j][k8..k]) {
                acc += t * x;
            }
            out[j] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 FP8 path must give the portable (exact) result bit for bit, every code value,
    /// odd lengths included.
    #[test]
    fn fp8_avx2_matches_portable() {
        for k in [1usize, 7, 8, 9, 31, 64, 100] {
            let codes: Vec<u8> = (0..k)
                .map(|i| ((i * 37 + k) % 256) as u8)
                .filter(|c| c & 0x7F != 0x7F)
                .collect();
            let k = codes.len();
            let rows: Vec<Vec<f64>> = (0..TB)
                .map(|j| {
                    (0..k)
                        .map(|i| e4m3_to_f32(((i * 11 + j * 5) % 256) as u8) as f64)
                        .map(|v| if v.is_nan() { 0.0 } else { v })
                        .collect()
                })
                .collect();
            for nt in 1..=TB {
                let plain: Vec<&[f64]> = rows[..nt].iter().map(|r| r.as_slice()).collect();
                let prepared: Vec<Vec<f64>> = rows[..nt]
                    .iter()
                    .map(|r| {
                        let mut p = vec![0.0; k];
                        prepare_fp8_acts(&r.iter().map(|&v| v as f32).collect::<Vec<_>>(), &mut p);
                        p
                    })
                    .collect();
                let xs: Vec<&[f64]> = prepared.iter().map(|r| r.as_slice()).collect();
                let (mut a, mut b) = ([0.0f32; TB], [0.0f32; TB]);
                fp8_dot(&codes, &xs, &mut a);
                fp8_dot_portable(&codes, &plain, &mut b);
                assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "k={k} nt={nt}");
            }
        }
    }

    #[test]
    fn dense_tail_is_decoded() {
        for k in [1usize, 5, 8, 13, 16, 23] {
            let w: Vec<u16> = (0..k)
                .map(|i| half::bf16::from_f32(i as f32 - 3.0).to_bits())
                .collect();
            let x: Vec<f32> = (0..k).map(|i| 0.5 * i as f32).collect();
            let mut out = [0.0f32];
            dense_dot(&Dense::Bf16(w), 0, k, &[&x], &mut out);
            let want: f32 = (0..k).map(|i| (i as f32 - 3.0) * 0.5 * i as f32).sum();
            assert_eq!(out[0], want, "k={k}");
        }
    }
}
