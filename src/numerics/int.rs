//! Integer weight quantization (W8A8, W8A16, W4A16, W4A16_ASYM), bit-exact with
//! compressed-tensors 0.19's CPU path (fixtures/schemes/README.md §5.3–5.6). `D(x)` rounds
//! an f32 result to the weight dtype (identity for F32); groups are `group` consecutive
//! columns of a row (the channel strategy is one group of all columns).
//!
//! ```text
//! symmetric:   s  = D(absmax / ((2^b - 1) / 2))           ; 0 -> finfo(D).eps
//!              q  = rint(clamp(D(w / s), -2^(b-1), 2^(b-1) - 1))
//! asymmetric:  mn = min(min(g), 0) ; mx = max(max(g), 0)
//!              s  = D(D(mx - mn) / (2^b - 1))
//!              zf = clamp(D(-2^(b-1) - D(mn / s)), qmin, qmax)   (s before the eps fix-up)
//!              s  = eps if s == 0 ; zp = rint(zf), NaN -> 0
//!              q  = rint(clamp(D(D(w / s) + zp), qmin, qmax))
//! ```
//! With [`Fp8Rounding::Direct`] (the triton kernel) the `D(..)` around `w / s` and `+ zp`
//! are skipped; scales and zero points are the same.

use super::convert::{eps, round_to};
use super::rows::{
    absmax, bad_row_error, check_matrix, decode_finite, maybe_round, put_scale, rint_small,
};
use super::Fp8Rounding;
use crate::checkpoint::DType;
use crate::Result;
use rayon::prelude::*;

/// The integer format of a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntParams {
    /// Bits per value (2..=8).
    pub bits: u32,
    /// Columns per scale (the whole row for the channel strategy); must divide `cols`.
    pub group: usize,
    pub symmetric: bool,
}

impl IntParams {
    fn qmin(self) -> f32 {
        -((1u32 << (self.bits - 1)) as f32)
    }

    fn qmax(self) -> f32 {
        ((1u32 << (self.bits - 1)) - 1) as f32
    }
}

/// Quantizes a `[rows, cols]` weight in `dtype`. Writes `q` (`rows*cols` int8 codes as
/// bytes), `scales` (`rows * cols/group` scales in `dtype`, little-endian) and `zps`
/// (`rows * cols/group` int8 zero points; all 0 when symmetric). Parallel over rows.
/// NaN/Inf → `Error::Quantize` naming `name` and the row.
#[allow(clippy::too_many_arguments)]
pub fn quantize_int_into(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    p: IntParams,
    rounding: Fp8Rounding,
    q: &mut [u8],
    scales: &mut [u8],
    zps: &mut [u8],
) -> Result<()> {
    let groups = cols / p.group.max(1);
    check_matrix(
        name,
        dtype,
        data,
        rows,
        cols,
        &[
            ("code", q.len(), rows * cols),
            ("scale", scales.len(), rows * groups * dtype.size()),
            ("zero-point", zps.len(), rows * groups),
        ],
    )?;
    if p.group == 0 || cols % p.group != 0 || !(2..=8).contains(&p.bits) {
        return Err(crate::Error::Quantize(format!(
            "{name}: {cols} columns do not split into groups of {} ({} bits)",
            p.group, p.bits
        )));
    }
    if rows == 0 {
        return Ok(());
    }
    let dsz = dtype.size();
    let eager = rounding == Fp8Rounding::Eager;
    let res = data
        .par_chunks(cols * dsz)
        .zip(q.par_chunks_mut(cols))
        .zip(scales.par_chunks_mut(groups * dsz))
        .zip(zps.par_chunks_mut(groups))
        .with_min_len((1usize << 15).div_ceil(cols).max(1))
        .try_for_each_init(
            || vec![0.0f32; cols],
            |buf, (((row, q), s), z)| {
                decode_finite(dtype, row, buf).ok_or(())?;
                let parts = buf
                    .chunks(p.group)
                    .zip(q.chunks_mut(p.group))
                    .zip(s.chunks_mut(dsz))
                    .zip(z.iter_mut());
                for (((w, q), s), z) in parts {
                    let (scale, zp) = group_qparams(dtype, p, w);
                    put_scale(dtype, scale, s);
                    *z = zp as i8 as u8;
                    quantize_group(dtype, eager, p, w, scale, zp, q);
                }
                Ok(())
            },
        );
    res.map_err(|()| bad_row_error(name, dtype, data, cols))
}

/// The scale (a value of `dtype`) and integer zero point of one group (the observer of the
/// data-free path; GPTQ computes its scales with it too, on the original weight).
pub fn group_qparams(dtype: DType, p: IntParams, w: &[f32]) -> (f32, f32) {
    let tiny = eps(dtype).unwrap_or(f32::EPSILON);
    let levels = ((1u32 << p.bits) - 1) as f32;
    if p.symmetric {
        let s = round_to(dtype, absmax(w) / (levels / 2.0));
        return (if s == 0.0 { tiny } else { s }, 0.0);
    }
    let mn = w.iter().fold(0.0f32, |m, &x| m.min(x));
    let mx = w.iter().fold(0.0f32, |m, &x| m.max(x));
    let s = round_to(dtype, round_to(dtype, mx - mn) / levels);
    // 0/0 for an all-zero group: NaN survives the clamp and becomes 0 (x86 cast).
    let zf = round_to(dtype, p.qmin() - round_to(dtype, mn / s));
    let zf = if zf.is_nan() {
        zf
    } else {
        zf.clamp(p.qmin(), p.qmax())
    };
    let zp = if zf.is_nan() {
        0.0
    } else {
        zf.round_ties_even()
    };
    (if s == 0.0 { tiny } else { s }, zp)
}

/// Codes of one group with its scale and zero point (`eager`: the CPU path's rounding of
/// each quotient to `dtype`). GPTQ calls it to code its fake-quantized weight as the
/// compressor does.
#[inline]
pub fn quantize_group(
    dtype: DType,
    eager: bool,
    p: IntParams,
    w: &[f32],
    s: f32,
    zp: f32,
    q: &mut [u8],
) {
    let (lo, hi) = (p.qmin(), p.qmax());
    for (o, &x) in q.iter_mut().zip(w) {
        let mut y = maybe_round(dtype, eager, x / s);
        if zp != 0.0 {
            y = maybe_round(dtype, eager, y + zp);
        }
        *o = rint_small(y.clamp(lo, hi)) as i8 as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_bytes(xs: &[f32]) -> Vec<u8> {
        xs.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect()
    }

    #[test]
    fn readme_w8a8_example_rounds_half_to_even() {
        // fixtures/schemes/README.md §5.3: s = 0x39E2, W/s = 99.5 → 100.
        let s = half::bf16::from_bits(0x39E2).to_f32();
        let mut row = vec![0.0f32; 8];
        row[0] = half::bf16::from_bits(0x3D61).to_f32(); // the row absmax
        row[1] = 0.04296875;
        let data = bf16_bytes(&row);
        let p = IntParams {
            bits: 8,
            group: 8,
            symmetric: true,
        };
        let (mut q, mut sc, mut z) = (vec![0; 8], vec![0; 2], vec![0; 1]);
        let r = Fp8Rounding::Eager;
        quantize_int_into("t", DType::BF16, &data, 1, 8, p, r, &mut q, &mut sc, &mut z).unwrap();
        assert_eq!(u16::from_le_bytes([sc[0], sc[1]]), 0x39E2);
        assert_eq!(half::bf16::from_f32(0.04296875 / s).to_f32(), 99.5);
        assert_eq!(q[1] as i8, 100);
        assert_eq!(q[0] as i8, 127);
    }

    #[test]
    fn asymmetric_zero_group_gets_eps_and_zero_point_zero() {
        let data = bf16_bytes(&[0.0; 8]);
        let p = IntParams {
            bits: 4,
            group: 8,
            symmetric: false,
        };
        let (mut q, mut sc, mut z) = (vec![9; 8], vec![0; 2], vec![9; 1]);
        let r = Fp8Rounding::Eager;
        quantize_int_into("t", DType::BF16, &data, 1, 8, p, r, &mut q, &mut sc, &mut z).unwrap();
        assert_eq!(u16::from_le_bytes([sc[0], sc[1]]), 0x3C00);
        assert_eq!((z[0], q), (0, vec![0; 8]));
    }
}
