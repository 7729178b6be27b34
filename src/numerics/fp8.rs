//! FP8 E4M3 (float8_e4m3fn) conversions and llm-compressor's FP8_DYNAMIC per-channel weight
//! quantization, bit-exact with its CPU path (fixtures/README.md §3.1):
//!
//! ```text
//! s[r] = D( f32(absmax(W[r,:])) / 448 )   ; s == ±0 -> finfo(D).eps       D = weight dtype
//! q    = e4m3_rne( clamp( D(f32(w) / f32(s)) + 0.0, -448, 448 ) )
//! ```
//! `D(x)` rounds an f32 result to the weight dtype (RNE); it is the identity for F32.

use super::convert::{bf16_bits_to_f32, eps};
use crate::checkpoint::DType;
use crate::{Error, Result};
use half::f16;
use rayon::prelude::*;
use std::sync::LazyLock;

/// Largest finite E4M3 value. (`float8::F8E4M3::MAX` is wrong: 416.)
pub const E4M3_MAX: f32 = 448.0;

/// How the quotient `W/s` is rounded to E4M3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fp8Rounding {
    /// llm-compressor's CPU/eager path (the verified one): round `W/s` to the weight dtype
    /// first, then to E4M3 (double rounding).
    #[default]
    Eager,
    /// llm-compressor's triton path on SM90+ GPUs: f32 quotient straight to E4M3 (single
    /// rounding). Inferred from the compressed-tensors source, not verified against a GPU run;
    /// scales are the same as `Eager`, ~3% of codes differ.
    Direct,
}

/// Exact value of every E4M3 code (0x7F and 0xFF are NaN).
static E4M3_TABLE: [f32; 256] = build_e4m3_table();

const fn build_e4m3_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = f32::from_bits(e4m3_to_f32_bits(c as u8));
        c += 1;
    }
    t
}

/// The f32 bit pattern of an E4M3 code: sign, 4-bit exponent (bias 7), 3-bit mantissa.
const fn e4m3_to_f32_bits(code: u8) -> u32 {
    let sign = ((code >> 7) as u32) << 31;
    let exp = ((code >> 3) & 0xF) as u32;
    let man = (code & 7) as u32;
    if exp == 15 && man == 7 {
        return sign | 0x7FC0_0000;
    }
    if exp != 0 {
        return sign | ((exp + 120) << 23) | (man << 20);
    }
    if man == 0 {
        return sign;
    }
    // Subnormal: man * 2^-9. Normalise: leading bit p of man gives 2^(p-9).
    let p = 31 - man.leading_zeros();
    let frac = (man - (1 << p)) << (23 - p);
    sign | ((p + 127 - 9) << 23) | frac
}

/// The value of an E4M3 code (exact; NaN for 0x7F/0xFF).
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_TABLE[code as usize]
}

/// f32 → E4M3 with round-to-nearest-even; the sign of zero is kept (a tiny negative gives
/// 0x80). Saturates: |x| ≥ 464 and ±inf give ±448; NaN gives 0x7F. llm-compressor clamps to
/// ±448 before casting, so callers that want its behaviour clamp first.
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    float8::F8E4M3::from_f32(x).to_bits()
}

/// E4M3 code of `clamp(v + 0.0, -448, 448)` for every 16-bit pattern `v` of BF16 (or F16):
/// the last two steps of the eager path as one lookup.
fn build_16bit_table(decode: fn(u16) -> f32) -> Box<[u8; 65536]> {
    let mut t = Box::new([0u8; 65536]);
    for (bits, slot) in t.iter_mut().enumerate() {
        let v = decode(bits as u16);
        *slot = if v.is_nan() {
            0x7F
        } else {
            f32_to_e4m3((v + 0.0).clamp(-E4M3_MAX, E4M3_MAX))
        };
    }
    t
}

static BF16_TO_E4M3: LazyLock<Box<[u8; 65536]>> =
    LazyLock::new(|| build_16bit_table(bf16_bits_to_f32));
static F16_TO_E4M3: LazyLock<Box<[u8; 65536]>> =
    LazyLock::new(|| build_16bit_table(|b| f16::from_bits(b).to_f32()));

/// f32 → BF16 bits, round-to-nearest-even. Not valid for NaN (never reached: quotients of
/// finite weights by positive finite scales are finite).
#[inline(always)]
fn f32_to_bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// FP8_DYNAMIC per-output-channel quantization of a `[rows, cols]` weight in `dtype` (BF16,
/// F16 or F32). Returns `(codes, scales)`: `rows*cols` E4M3 codes and `rows` scales as raw
/// little-endian bytes in `dtype`. NaN/Inf → `Error::Quantize` naming `name` and the row.
pub fn quantize_fp8_channel(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    rounding: Fp8Rounding,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut codes = vec![0u8; rows.saturating_mul(cols)];
    let mut scales = vec![0u8; rows.saturating_mul(dtype.size())];
    quantize_fp8_channel_into(
        name,
        dtype,
        data,
        rows,
        cols,
        rounding,
        &mut codes,
        &mut scales,
    )?;
    Ok((codes, scales))
}

/// [`quantize_fp8_channel`] writing into caller buffers: `codes` of `rows*cols` bytes and
/// `scales` of `rows * dtype.size()` bytes. Parallel over rows (rayon), no allocation.
#[allow(clippy::too_many_arguments)]
pub fn quantize_fp8_channel_into(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    rounding: Fp8Rounding,
    codes: &mut [u8],
    scales: &mut [u8],
) -> Result<()> {
    check_args(name, dtype, data, rows, cols, codes, scales)?;
    if rows == 0 {
        return Ok(());
    }
    let dsz = dtype.size();
    // Enough work per rayon task to amortise its overhead on narrow matrices.
    let min_rows = (1usize << 15).div_ceil(cols).max(1);
    let res = data
        .par_chunks(cols * dsz)
        .zip(codes.par_chunks_mut(cols))
        .zip(scales.par_chunks_mut(dsz))
        .with_min_len(min_rows)
        .try_for_each(|((row, out), scale)| {
            quantize_row(dtype, row, out, scale, rounding).ok_or(())
        });
    if res.is_ok() {
        return Ok(());
    }
    // Report the first bad row, whichever thread hit one first.
    let bad = data
        .chunks(cols * dsz)
        .position(|row| row_absmax(dtype, row).is_none())
        .unwrap_or(0);
    Err(Error::Quantize(format!(
        "{name}: row {bad} contains NaN or Inf; cannot quantize"
    )))
}

fn check_args(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
) -> Result<()> {
    if !dtype.is_float_weight() {
        return Err(Error::Quantize(format!(
            "{name}: cannot quantize a {dtype} weight to FP8 (BF16, F16 or F32 only)"
        )));
    }
    if cols == 0 {
        return Err(Error::Quantize(format!("{name}: weight has no columns")));
    }
    let n = rows.checked_mul(cols);
    let nbytes = n.and_then(|n| n.checked_mul(dtype.size()));
    if nbytes != Some(data.len()) {
        return Err(Error::Quantize(format!(
            "{name}: {} bytes of {dtype} data do not make a [{rows}, {cols}] matrix",
            data.len()
        )));
    }
    if n != Some(codes.len()) || scales.len() != rows * dtype.size() {
        return Err(Error::Quantize(format!(
            "{name}: output buffers of {} and {} bytes do not fit [{rows}, {cols}]",
            codes.len(),
            scales.len()
        )));
    }
    Ok(())
}

/// Quantizes one row; `None` if it holds NaN or Inf.
fn quantize_row(
    dtype: DType,
    row: &[u8],
    out: &mut [u8],
    scale_out: &mut [u8],
    rounding: Fp8Rounding,
) -> Option<()> {
    let s = row_scale(dtype, row_absmax(dtype, row)?);
    match dtype {
        DType::BF16 => scale_out.copy_from_slice(&f32_to_bf16_rne(s).to_le_bytes()),
        DType::F16 => scale_out.copy_from_slice(&f16::from_f32(s).to_bits().to_le_bytes()),
        _ => scale_out.copy_from_slice(&s.to_le_bytes()),
    }
    fp8_codes(dtype, row, s, rounding, out);
    Some(())
}

/// E4M3 codes of the raw `dtype` elements `src` divided by the scale `s` (a value of
/// `dtype`): `e4m3(clamp(D(w / s) + 0.0, ±448))` for `Eager`, without the `D(..)` for
/// `Direct`. The elements must be finite.
pub fn fp8_codes(dtype: DType, src: &[u8], s: f32, rounding: Fp8Rounding, out: &mut [u8]) {
    match (dtype, rounding) {
        (DType::BF16, Fp8Rounding::Eager) => quantize_bf16_eager(src, out, s),
        (DType::F16, Fp8Rounding::Eager) => {
            let table = &**F16_TO_E4M3;
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                let w = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                *o = table[f16::from_f32(w / s).to_bits() as usize];
            }
        }
        // F32 eager (the dtype rounding is the identity) and every direct rounding.
        _ => {
            let step = dtype.size();
            for (o, c) in out.iter_mut().zip(src.chunks_exact(step)) {
                let w = element_to_f32(dtype, c);
                *o = f32_to_e4m3((w / s + 0.0).clamp(-E4M3_MAX, E4M3_MAX));
            }
        }
    }
}

/// The BF16 eager path in blocks: a branch-free (vectorisable) divide-and-round pass into a
/// small stack buffer, then the table lookup.
fn quantize_bf16_eager(row: &[u8], out: &mut [u8], s: f32) {
    const BLOCK: usize = 64;
    let table = &**BF16_TO_E4M3;
    let mut y = [0u16; BLOCK];
    for (src, dst) in row.chunks(2 * BLOCK).zip(out.chunks_mut(BLOCK)) {
        for (yi, c) in y.iter_mut().zip(src.chunks_exact(2)) {
            let w = bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            *yi = f32_to_bf16_rne(w / s);
        }
        for (o, &b) in dst.iter_mut().zip(&y) {
            *o = table[b as usize];
        }
    }
}

#[inline]
fn element_to_f32(dtype: DType, c: &[u8]) -> f32 {
    match dtype {
        DType::BF16 => bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])),
        DType::F16 => f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
        _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
    }
}

/// `max |w|` of a row (exact), or `None` if the row holds NaN or Inf. Works on the bit
/// patterns: for non-negative floats the integer order is the numeric order.
fn row_absmax(dtype: DType, row: &[u8]) -> Option<f32> {
    match dtype {
        DType::BF16 | DType::F16 => {
            let m = row
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7FFF)
                .max()
                .unwrap_or(0);
            let inf = if dtype == DType::BF16 { 0x7F80 } else { 0x7C00 };
            (m < inf).then(|| element_to_f32(dtype, &m.to_le_bytes()))
        }
        _ => {
            let m = row
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7FFF_FFFF)
                .max()
                .unwrap_or(0);
            (m < 0x7F80_0000).then(|| f32::from_bits(m))
        }
    }
}

/// The per-channel scale, as an f32 holding a value exactly representable in `dtype`:
/// `D(absmax / 448)`, with a zero result replaced by `finfo(D).eps`.
pub fn fp8_scale(dtype: DType, absmax: f32) -> f32 {
    row_scale(dtype, absmax)
}

#[inline]
fn row_scale(dtype: DType, absmax: f32) -> f32 {
    let s = super::convert::round_to(dtype, absmax / E4M3_MAX);
    if s == 0.0 {
        eps(dtype).unwrap_or(f32::EPSILON)
    } else {
        s
    }
}
