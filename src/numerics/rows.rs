//! Shared plumbing of the row-wise quantizers: argument checks, decoding a row of raw
//! BF16/F16/F32 bytes to f32, the NaN/Inf error, and writing a scale in the weight dtype.

use super::convert::{round_to, to_f32_into};
use crate::checkpoint::DType;
use crate::{Error, Result};
use half::{bf16, f16};

/// Checks that `data` is a `[rows, cols]` matrix of a float weight dtype, and that each
/// output buffer has the expected length (`(what, got, want)`).
pub(crate) fn check_matrix(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    outputs: &[(&str, usize, usize)],
) -> Result<()> {
    if !dtype.is_float_weight() {
        return Err(Error::Quantize(format!(
            "{name}: cannot quantize a {dtype} weight (BF16, F16 or F32 only)"
        )));
    }
    if cols == 0 {
        return Err(Error::Quantize(format!("{name}: weight has no columns")));
    }
    let nbytes = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(dtype.size()));
    if nbytes != Some(data.len()) {
        return Err(Error::Quantize(format!(
            "{name}: {} bytes of {dtype} data do not make a [{rows}, {cols}] matrix",
            data.len()
        )));
    }
    for &(what, got, want) in outputs {
        if got != want {
            return Err(Error::Quantize(format!(
                "{name}: {what} buffer of {got} bytes, expected {want} for [{rows}, {cols}]"
            )));
        }
    }
    Ok(())
}

/// Decodes one row to f32 into `out`; `None` when it holds NaN or Inf.
#[inline]
pub(crate) fn decode_finite(dtype: DType, row: &[u8], out: &mut [f32]) -> Option<()> {
    to_f32_into(dtype, row, out).ok()?;
    out.iter().all(|x| x.is_finite()).then_some(())
}

/// The error for the first row of `data` holding NaN or Inf (row relative to `data`).
pub(crate) fn bad_row_error(name: &str, dtype: DType, data: &[u8], cols: usize) -> Error {
    let mut buf = vec![0.0f32; cols];
    let bad = data
        .chunks(cols * dtype.size())
        .position(|row| decode_finite(dtype, row, &mut buf).is_none())
        .unwrap_or(0);
    Error::Quantize(format!(
        "{name}: row {bad} contains NaN or Inf; cannot quantize"
    ))
}

/// Writes `s` (already a value of `dtype`) as little-endian `dtype` bytes.
#[inline]
pub(crate) fn put_scale(dtype: DType, s: f32, out: &mut [u8]) {
    match dtype {
        DType::BF16 => out.copy_from_slice(&bf16::from_f32(s).to_bits().to_le_bytes()),
        DType::F16 => out.copy_from_slice(&f16::from_f32(s).to_bits().to_le_bytes()),
        _ => out.copy_from_slice(&s.to_le_bytes()),
    }
}

/// `D(x)` when `eager`, else `x`: the rounding of a quotient to the weight dtype that the
/// CPU path performs and the triton path skips.
/// `x` must not be NaN (quotients of finite weights by positive scales never are).
#[inline(always)]
pub(crate) fn maybe_round(dtype: DType, eager: bool, x: f32) -> f32 {
    match (eager, dtype) {
        (false, _) => x,
        (true, DType::BF16) => bf16_round(x),
        (true, _) => round_to(dtype, x),
    }
}

/// `bf16(x)` (round to nearest even) widened back to f32, on the bits: branch-free, for the
/// hot loops. Overflow gives inf as it should; not valid for NaN.
#[inline(always)]
pub(crate) fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// Round half to even of `|x| <= 2^22` by the 1.5·2^23 trick (`round_ties_even` is a libm
/// call on baseline x86-64). The integer quantizers only round clamped values.
#[inline(always)]
pub(crate) fn rint_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

/// `max |x|` of a slice of finite values (0 for an empty slice; -0.0 counts as 0).
#[inline]
pub(crate) fn absmax(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_rounding_matches_half_and_rint() {
        // Every bf16 neighbourhood's halfway points and their neighbours, for all finite
        // bf16 prefixes, plus a sweep of the f32 bit space.
        let lows = [0x0000u32, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF];
        let halfway = (0u32..0x7F80).flat_map(|hi| lows.iter().map(move |lo| (hi << 16) | lo));
        let sweep = (0u32..0x7F80_0000).step_by(4093);
        for bits in halfway.chain(sweep) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let want = half::bf16::from_f32(x).to_f32();
                assert_eq!(bf16_round(x).to_bits(), want.to_bits(), "{bits:#x}");
            }
        }
        for i in -2560..=2560 {
            let x = i as f32 / 20.0;
            assert_eq!(rint_small(x), x.round_ties_even(), "{x}");
        }
    }
}
