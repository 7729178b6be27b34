//! FP4 (E2M1) weight quantization: NVFP4A16 (group 16, E4M3 group scales under an F32
//! global scale) and MXFP4A16 (group 32, E8M0 power-of-two scales), bit-exact with
//! compressed-tensors 0.19's CPU path (fixtures/schemes/README.md §4.1, §4.5, §5.7, §5.8).
//!
//! ```text
//! NVFP4  gs    = D(D(1 / D(max(A, 2^-126))) * 2688) ; inf/NaN -> 1     A = absmax of the fused set
//!        s     = e4m3(gs * D(absmax(group) / 6))     ; 0 -> 0.125
//!        v     = fp4(w / (s / gs) + 0.0)             (f32 throughout)
//! MXFP4  p     = absmax(group) rounded to a power of two (up iff mantissa >= 0.75)
//!        u     = clamp(127 + log2(p) - 2, 0, 255) ; s = D(2^(u - 127)) ; 0 -> 1
//!        v     = fp4(D(w / s) + 0.0)
//!        byte  = 127 + log2(s)  (127 when s is inf)
//! ```
//! Packing: nibble = index(|v|) | sign << 3 (so -0 is 0x8); byte = nib[2j] | nib[2j+1] << 4.

use super::convert::round_to;
use super::fp8::{e4m3_to_f32, f32_to_e4m3, E4M3_MAX};
use super::rows::{absmax, bad_row_error, check_matrix, decode_finite, maybe_round};
use super::Fp8Rounding;
use crate::checkpoint::DType;
use crate::{Error, Result};
use rayon::prelude::*;

/// Largest E2M1 value.
pub const FP4_MAX: f32 = 6.0;

/// NVFP4 group size.
pub const NVFP4_GROUP: usize = 16;

/// MXFP4 group size.
pub const MXFP4_GROUP: usize = 32;

/// The E2M1 nibble of `x`: clamp to ±6, round to nearest with ties to even, sign bit set
/// for negative `x` (a negative value that rounds to 0 gives -0, nibble 0x8; ±0 gives 0).
#[inline]
pub fn fp4_nibble(x: f32) -> u8 {
    let a = x.abs().min(FP4_MAX);
    // The thresholds of round-to-nearest-even between neighbouring values: `<=` where the
    // tie goes down (to the even lower value), `<` where it goes up. Branch-free.
    let index = u8::from(a > 0.25)
        + u8::from(a >= 0.75)
        + u8::from(a > 1.25)
        + u8::from(a >= 1.75)
        + u8::from(a > 2.5)
        + u8::from(a >= 3.5)
        + u8::from(a > 5.0);
    index | (u8::from(x < 0.0) << 3)
}

/// The value of an E2M1 nibble.
pub fn fp4_value(nibble: u8) -> f32 {
    const VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let v = VALUES[(nibble & 7) as usize];
    if nibble & 8 != 0 {
        -v
    } else {
        v
    }
}

/// The NVFP4 global scale of a fused set whose exact absmax is `absmax` (a value of the
/// weight dtype), as an f32.
pub fn nvfp4_global_scale(dtype: DType, absmax: f32) -> f32 {
    let a = round_to(dtype, absmax.max(f32::MIN_POSITIVE));
    // torch lowers `2688 / t` to `t.reciprocal() * 2688`: two roundings, not one.
    let gs = round_to(dtype, round_to(dtype, 1.0 / a) * (E4M3_MAX * FP4_MAX));
    if gs.is_finite() {
        gs
    } else {
        1.0
    }
}

/// `max |w|` of a `[rows, cols]` weight, or the NaN/Inf error naming its first bad row.
pub fn weight_absmax(name: &str, dtype: DType, data: &[u8], cols: usize) -> Result<f32> {
    check_matrix(
        name,
        dtype,
        data,
        data.len() / (cols * dtype.size()).max(1),
        cols,
        &[],
    )?;
    data.par_chunks(cols * dtype.size())
        .try_fold(
            || (vec![0.0f32; cols], 0.0f32),
            |(mut buf, m), row| {
                decode_finite(dtype, row, &mut buf).ok_or(())?;
                let m = m.max(absmax(&buf));
                Ok((buf, m))
            },
        )
        .map(|r| r.map(|(_, m)| m))
        .try_reduce(|| 0.0, |a, b| Ok(a.max(b)))
        .map_err(|()| bad_row_error(name, dtype, data, cols))
}

fn check_groups(name: &str, cols: usize, group: usize) -> Result<()> {
    if cols % group != 0 {
        return Err(Error::Quantize(format!(
            "{name}: {cols} columns are not a multiple of the group size {group}"
        )));
    }
    Ok(())
}

/// NVFP4 quantization of a `[rows, cols]` weight with global scale `gs`. Writes `packed`
/// (`rows * cols/2` bytes) and `scales` (`rows * cols/16` E4M3 codes).
#[allow(clippy::too_many_arguments)]
pub fn quantize_nvfp4_into(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    gs: f32,
    packed: &mut [u8],
    scales: &mut [u8],
) -> Result<()> {
    let groups = cols / NVFP4_GROUP;
    let sizes = [
        ("packed", packed.len(), rows * cols / 2),
        ("scale", scales.len(), rows * groups),
    ];
    check_matrix(name, dtype, data, rows, cols, &sizes)?;
    check_groups(name, cols, NVFP4_GROUP)?;
    let res = data
        .par_chunks(cols * dtype.size())
        .zip(packed.par_chunks_mut(cols / 2))
        .zip(scales.par_chunks_mut(groups))
        .with_min_len((1usize << 15).div_ceil(cols).max(1))
        .try_for_each_init(
            || vec![0.0f32; cols],
            |buf, ((row, out), sc)| {
                decode_finite(dtype, row, buf).ok_or(())?;
                let parts = buf
                    .chunks(NVFP4_GROUP)
                    .zip(out.chunks_mut(NVFP4_GROUP / 2))
                    .zip(sc.iter_mut());
                for ((w, out), code) in parts {
                    let local = round_to(dtype, absmax(w) / FP4_MAX);
                    *code = f32_to_e4m3((gs * local).clamp(-E4M3_MAX, E4M3_MAX));
                    if *code == 0 || *code == 0x80 {
                        *code = 0x20; // 0.125, the E4M3 eps
                    }
                    let eff = e4m3_to_f32(*code) / gs;
                    pack_nibbles(w.iter().map(|&x| fp4_nibble(x / eff + 0.0)), out);
                }
                Ok(())
            },
        );
    res.map_err(|()| bad_row_error(name, dtype, data, cols))
}

/// MXFP4 quantization of a `[rows, cols]` weight. Writes `packed` (`rows * cols/2` bytes)
/// and `scales` (`rows * cols/32` E8M0 exponent bytes).
#[allow(clippy::too_many_arguments)]
pub fn quantize_mxfp4_into(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    rounding: Fp8Rounding,
    packed: &mut [u8],
    scales: &mut [u8],
) -> Result<()> {
    let groups = cols / MXFP4_GROUP;
    let sizes = [
        ("packed", packed.len(), rows * cols / 2),
        ("scale", scales.len(), rows * groups),
    ];
    check_matrix(name, dtype, data, rows, cols, &sizes)?;
    check_groups(name, cols, MXFP4_GROUP)?;
    let eager = rounding == Fp8Rounding::Eager;
    let res = data
        .par_chunks(cols * dtype.size())
        .zip(packed.par_chunks_mut(cols / 2))
        .zip(scales.par_chunks_mut(groups))
        .with_min_len((1usize << 15).div_ceil(cols).max(1))
        .try_for_each_init(
            || vec![0.0f32; cols],
            |buf, ((row, out), sc)| {
                decode_finite(dtype, row, buf).ok_or(())?;
                let parts = buf
                    .chunks(MXFP4_GROUP)
                    .zip(out.chunks_mut(MXFP4_GROUP / 2))
                    .zip(sc.iter_mut());
                for ((w, out), byte) in parts {
                    let s = mx_scale(dtype, absmax(w));
                    *byte = mx_scale_byte(s);
                    let codes = w
                        .iter()
                        .map(|&x| fp4_nibble(maybe_round(dtype, eager, x / s) + 0.0));
                    pack_nibbles(codes, out);
                }
                Ok(())
            },
        );
    res.map_err(|()| bad_row_error(name, dtype, data, cols))
}

/// The MXFP4 scale of a group with absmax `a` (a value of `dtype`), as a value of `dtype`.
pub fn mx_scale(dtype: DType, a: f32) -> f32 {
    let p = round_to_power_of_two(dtype, a);
    // 127 + floor(log2(p)) - 2, clamped to a uint8 exponent; p = 0 gives -inf -> 0.
    let u = if p == 0.0 {
        0
    } else if p.is_infinite() {
        255
    } else {
        (127 + p.log2().floor() as i32 - 2).clamp(0, 255)
    };
    let s = round_to(dtype, exp2_biased(u));
    if s == 0.0 {
        1.0 // eps of a uint8 scale; only reachable for F16 weights
    } else {
        s
    }
}

/// `2^(u - 127)` for `u` in `0..=255`, exactly (`u = 0` is the subnormal 2^-127, `u = 255`
/// is inf).
fn exp2_biased(u: i32) -> f32 {
    match u {
        0 => f32::from_bits(1 << 22),
        u => f32::from_bits((u as u32) << 23),
    }
}

/// The stored E8M0 byte of a scale: `uint8(127 + int32(floor(log2(s))))`, where an inf
/// scale wraps to 127 (int32(inf) is INT_MIN on x86).
pub fn mx_scale_byte(s: f32) -> u8 {
    if s.is_infinite() {
        return 127;
    }
    (127 + s.log2().floor() as i32) as u8
}

/// compressed-tensors' `round_to_power_2` on the bits of `a` in `dtype`: add half of the
/// mantissa's top-two-bit step, then drop the mantissa (up iff mantissa >= 0.75).
fn round_to_power_of_two(dtype: DType, a: f32) -> f32 {
    match dtype {
        DType::BF16 => {
            let b = half::bf16::from_f32(a).to_bits() as u32;
            half::bf16::from_bits(((b + 0x20) & 0xFF80) as u16).to_f32()
        }
        DType::F16 => {
            let b = half::f16::from_f32(a).to_bits() as u32;
            half::f16::from_bits(((b + 0x100) & 0xFC00) as u16).to_f32()
        }
        _ => f32::from_bits((a.to_bits() + (1 << 21)) & 0xFF80_0000),
    }
}

/// Packs nibbles two per byte, the even column in the low nibble.
#[inline]
fn pack_nibbles(mut nibbles: impl Iterator<Item = u8>, out: &mut [u8]) {
    for b in out {
        let lo = nibbles.next().unwrap_or(0);
        let hi = nibbles.next().unwrap_or(0);
        *b = lo | (hi << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fp4_tie_goes_to_even() {
        // U9 of fixtures/schemes/README.md: packed bytes 80 A2 A2 C4 C4 E6 E6 F7.
        let xs = [
            0.25f32, -0.25, 0.75, -0.75, 1.25, -1.25, 1.75, -1.75, 2.5, -2.5, 3.5, -3.5, 5.0, -5.0,
            6.0, -6.0,
        ];
        let mut out = [0u8; 8];
        pack_nibbles(xs.iter().map(|&x| fp4_nibble(x + 0.0)), &mut out);
        assert_eq!(out, [0x80, 0xA2, 0xA2, 0xC4, 0xC4, 0xE6, 0xE6, 0xF7]);
        assert_eq!(fp4_nibble(-0.0 + 0.0), 0);
        assert_eq!(fp4_value(0xF), -6.0);
    }

    #[test]
    fn readme_global_scales() {
        assert_eq!(nvfp4_global_scale(DType::BF16, 0.5), 5376.0);
        assert_eq!(nvfp4_global_scale(DType::BF16, 300.0), 8.9375);
        assert_eq!(nvfp4_global_scale(DType::BF16, 6.0), 448.0);
        assert_eq!(nvfp4_global_scale(DType::BF16, 0.0), 1.0);
        let max = half::bf16::from_bits(0x7F7F).to_f32();
        assert_eq!(nvfp4_global_scale(DType::BF16, max).to_bits(), 0x0528_0000);
    }

    #[test]
    fn mx_scales_round_up_from_three_quarters() {
        // a = 0.043212890625 (0x3D31): mantissa below 0x60, p = 2^-5, u = 120, s = 2^-7.
        let s = mx_scale(DType::BF16, half::bf16::from_bits(0x3D31).to_f32());
        assert_eq!((s, mx_scale_byte(s)), (2f32.powi(-7), 120));
        // 1.75 * 2^-5 rounds up to 2^-4.
        assert_eq!(mx_scale(DType::BF16, 1.75 / 32.0), 2f32.powi(-6));
        // bf16 max rounds to inf: the scale is inf and the byte 127.
        let max = half::bf16::from_bits(0x7F7F).to_f32();
        let s = mx_scale(DType::BF16, max);
        assert_eq!((s.is_infinite(), mx_scale_byte(s)), (true, 127));
        assert_eq!(mx_scale_byte(mx_scale(DType::BF16, 0.0)), 0);
        assert_eq!(mx_scale_byte(mx_scale(DType::BF16, 6.0)), 127);
    }
}
