//! Float element conversions between raw little-endian tensor bytes and `f32`, and the
//! "round an f32 result to the tensor's dtype" step torch performs after every BF16/F16 op.

use crate::checkpoint::DType;
use crate::{Error, Result};
use half::{bf16, f16};

/// Decodes a BF16/F16/F32/F8_E4M3 byte slice to `f32` (exact widening).
pub fn to_f32(dtype: DType, data: &[u8]) -> Result<Vec<f32>> {
    let n = element_count(dtype, data.len())?;
    let mut out = vec![0.0f32; n];
    to_f32_into(dtype, data, &mut out)?;
    Ok(out)
}

/// Like [`to_f32`], into `out` (its length must be the element count of `data`).
pub fn to_f32_into(dtype: DType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let n = element_count(dtype, data.len())?;
    if out.len() != n {
        return Err(Error::Quantize(format!(
            "to_f32: {n} {dtype} elements but an output of {}",
            out.len()
        )));
    }
    match dtype {
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F8_E4M3 => {
            for (o, &b) in out.iter_mut().zip(data) {
                *o = super::fp8::e4m3_to_f32(b);
            }
        }
        _ => return Err(unsupported(dtype)),
    }
    Ok(())
}

/// Encodes `f32` values as `dtype` bytes (BF16/F16 with round-to-nearest-even, or F32).
pub fn from_f32(dtype: DType, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()),
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            _ => return Err(unsupported(dtype)),
        }
    }
    Ok(out)
}

/// Exact BF16 → f32.
#[inline]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Rounds `x` to `dtype` (RNE) and returns the result widened back to `f32`: what torch does
/// after computing a BF16/F16 op in f32. Identity for F32 (and any other dtype).
#[inline]
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// `torch.finfo(dtype).eps` for the float weight dtypes (2^-7, 2^-10, 2^-23).
pub fn eps(dtype: DType) -> Option<f32> {
    match dtype {
        DType::BF16 => Some(bf16::EPSILON.to_f32()),
        DType::F16 => Some(f16::EPSILON.to_f32()),
        DType::F32 => Some(f32::EPSILON),
        _ => None,
    }
}

fn element_count(dtype: DType, len: usize) -> Result<usize> {
    if len % dtype.size() != 0 {
        return Err(Error::Quantize(format!(
            "{len} bytes is not a whole number of {dtype} elements"
        )));
    }
    Ok(len / dtype.size())
}

fn unsupported(dtype: DType) -> Error {
    Error::Unsupported(format!("cannot convert {dtype} to/from f32"))
}
