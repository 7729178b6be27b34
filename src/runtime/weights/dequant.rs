//! The tensors of the non-FP8_DYNAMIC presets, and their load-time dequantization.
//!
//! The loader keeps W8A8 (INT8 channel) weights as int8 codes (see the parent module); the
//! W8A8 row below is kept for callers that need the dense form. Every other such Linear is
//! expanded once, at load, into a dense matrix of the model's dtype
//! `D` (the dtype of `model.embed_tokens.weight`, BF16 for llm-compressor outputs), exactly
//! as compressed-tensors' `decompress` gives it (fixtures/schemes/README.md, "dequant"):
//!
//! | format | `W[r, c]` |
//! |---|---|
//! | FP8_BLOCK | `D(e4m3(q) · s[r/128, c/128])` |
//! | W8A8 | `D(q · s[r])` |
//! | W8A16 / W4A16 | `D(q · s[r, c/128])`, `q = u − 2^(b−1)` unpacked from the int32 words |
//! | W4A16_ASYM | `D((q − zp[r, c/128]) · s[r, c/128])` (`q − zp` is exact) |
//! | NVFP4A16 | `D(v · (s / gs))`, `s / gs` and the product in f32 |
//! | MXFP4A16 | `D(v · 2^(u − 127))` |
//!
//! Memory: 2 bytes per weight (BF16/F16), like an unquantized model — 4× the packed size of
//! the 4-bit formats, 2× that of the 8-bit ones. The matmul is then the dense BF16 one, with
//! f32 activations: an FP8_BLOCK weight dequantized here (a partial column block, which
//! vLLM's activation grouping cannot handle) runs weight-only.

use super::{bad, Dense, Expect, Kind};
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::numerics::e4m3_to_f32;
use crate::runtime::config::WeightScheme;
use crate::Result;

/// The tensors a quantized Linear `[rows, cols]` of `scheme` must hold (all but FP8 channel,
/// which the caller handles).
pub(super) fn expect(
    scheme: WeightScheme,
    module: &str,
    rows: usize,
    cols: usize,
) -> Result<Vec<Expect>> {
    let e = |suffix: &str, shape: Vec<usize>, kind: Kind| Expect {
        name: format!("{module}.{suffix}"),
        shape,
        kind,
    };
    let need_groups = |g: usize| -> Result<usize> {
        match cols % g {
            0 => Ok(cols / g),
            _ => Err(bad(format!(
                "{module}: {cols} columns are not a multiple of the group size {g}"
            ))),
        }
    };
    Ok(match scheme {
        WeightScheme::Fp8Channel => vec![
            e("weight", vec![rows, cols], Kind::Fp8),
            e("weight_scale", vec![rows, 1], Kind::Scale),
        ],
        // llm-compressor writes the one scale as `[1]`; `Kind::Scale` also takes `[1, 1]`.
        WeightScheme::Fp8Tensor => vec![
            e("weight", vec![rows, cols], Kind::Fp8),
            e("weight_scale", vec![1, 1], Kind::Scale),
        ],
        WeightScheme::Fp8Block {
            block_rows,
            block_cols,
        } => vec![
            e("weight", vec![rows, cols], Kind::Fp8),
            e(
                "weight_scale",
                vec![rows.div_ceil(block_rows), cols.div_ceil(block_cols)],
                Kind::Scales,
            ),
        ],
        WeightScheme::Int8Channel => vec![
            e("weight", vec![rows, cols], Kind::Typed(DType::I8)),
            e("weight_scale", vec![rows, 1], Kind::Scale),
        ],
        WeightScheme::IntGroup {
            bits,
            group,
            symmetric,
        } => {
            let groups = need_groups(group)?;
            let per_word = (32 / bits) as usize;
            let mut v = vec![
                e(
                    "weight_packed",
                    vec![rows, cols.div_ceil(per_word)],
                    Kind::Typed(DType::I32),
                ),
                e("weight_scale", vec![rows, groups], Kind::Scales),
                e("weight_shape", vec![2], Kind::Typed(DType::I64)),
            ];
            if !symmetric {
                v.push(e(
                    "weight_zero_point",
                    vec![rows.div_ceil(per_word), groups],
                    Kind::Typed(DType::I32),
                ));
            }
            v
        }
        WeightScheme::Nvfp4 => vec![
            e(
                "weight_packed",
                vec![rows, cols / 2],
                Kind::Typed(DType::U8),
            ),
            e("weight_scale", vec![rows, need_groups(16)?], Kind::Fp8),
            e("weight_global_scale", vec![1], Kind::Scales),
        ],
        WeightScheme::Mxfp4 => vec![
            e(
                "weight_packed",
                vec![rows, cols / 2],
                Kind::Typed(DType::U8),
            ),
            e(
                "weight_scale",
                vec![rows, need_groups(32)?],
                Kind::Typed(DType::U8),
            ),
        ],
    })
}

/// A dense `[rows, cols]` weight of dtype `out` (BF16, F16 or F32) holding the dequantized
/// values of the (checked) Linear `module`.
pub(super) fn dequantize(
    ck: &Checkpoint,
    scheme: WeightScheme,
    module: &str,
    rows: usize,
    cols: usize,
    out: DType,
) -> Result<Dense> {
    let t = |suffix: &str| -> Result<&TensorInfo> {
        let name = format!("{module}.{suffix}");
        ck.get(&name)
            .ok_or_else(|| bad(format!("{}: tensor {name} is missing", ck.dir.display())))
    };
    let floats = |suffix: &str| -> Result<Vec<f32>> {
        let x = t(suffix)?;
        crate::numerics::to_f32(x.dtype, ck.data(x))
    };
    let mut w = vec![0.0f32; rows * cols];
    match scheme {
        WeightScheme::Fp8Channel | WeightScheme::Int8Channel => {
            let codes = ck.data(t("weight")?);
            let s = floats("weight_scale")?;
            let fp8 = scheme == WeightScheme::Fp8Channel;
            for (i, (v, &c)) in w.iter_mut().zip(codes).enumerate() {
                let q = if fp8 { e4m3_to_f32(c) } else { c as i8 as f32 };
                *v = q * s[i / cols];
            }
        }
        WeightScheme::Fp8Tensor => {
            let s = floats("weight_scale")?[0];
            for (v, &c) in w.iter_mut().zip(ck.data(t("weight")?)) {
                *v = e4m3_to_f32(c) * s;
            }
        }
        WeightScheme::Fp8Block {
            block_rows,
            block_cols,
        } => {
            let codes = ck.data(t("weight")?);
            let s = floats("weight_scale")?;
            let per_row = cols.div_ceil(block_cols);
            for (i, (v, &c)) in w.iter_mut().zip(codes).enumerate() {
                let (r, col) = (i / cols, i % cols);
                *v = e4m3_to_f32(c) * s[(r / block_rows) * per_row + col / block_cols];
            }
        }
        WeightScheme::IntGroup {
            bits,
            group,
            symmetric,
        } => {
            check_shape(ck, t("weight_shape")?, rows, cols)?;
            let q = unpack_columns(ck.data(t("weight_packed")?), rows, cols, bits);
            let s = floats("weight_scale")?;
            let groups = cols / group;
            let zp = match symmetric {
                true => vec![0i32; rows * groups],
                false => unpack_rows(ck.data(t("weight_zero_point")?), rows, groups, bits),
            };
            for (i, v) in w.iter_mut().enumerate() {
                let g = (i / cols) * groups + (i % cols) / group;
                *v = (q[i] - zp[g]) as f32 * s[g];
            }
        }
        WeightScheme::Nvfp4 => {
            let packed = ck.data(t("weight_packed")?);
            let s = ck.data(t("weight_scale")?);
            let gs = floats("weight_global_scale")?[0];
            for (i, v) in w.iter_mut().enumerate() {
                let scale = e4m3_to_f32(s[i / 16]) / gs;
                *v = crate::numerics::fp4::fp4_value(nibble(packed, i)) * scale;
            }
        }
        WeightScheme::Mxfp4 => {
            let packed = ck.data(t("weight_packed")?);
            let s = ck.data(t("weight_scale")?);
            for (i, v) in w.iter_mut().enumerate() {
                *v = crate::numerics::fp4::fp4_value(nibble(packed, i)) * e8m0(s[i / 32]);
            }
        }
    }
    Ok(to_dense(w, out))
}

/// FP4 value `i` of a row-major packed array: two per byte, the even one in the low nibble.
fn nibble(packed: &[u8], i: usize) -> u8 {
    (packed[i / 2] >> (4 * (i % 2))) & 0xF
}

/// `2^(u − 127)` exactly (u = 0 is the f32 subnormal 2^-127, u = 255 is inf).
pub fn e8m0(u: u8) -> f32 {
    match u {
        0 => f32::from_bits(1 << 22),
        _ => f32::from_bits((u as u32) << 23),
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Signed `bits`-bit value `k` of a word (`u − 2^(bits−1)`, first value in the low bits).
fn field(word: u32, k: usize, bits: u32) -> i32 {
    let u = (word >> (bits as usize * k)) & ((1u32 << bits) - 1);
    u as i32 - (1 << (bits - 1))
}

/// The inverse of `numerics::pack::pack_columns`: `[rows, cols]` signed codes.
pub fn unpack_columns(bytes: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<i32> {
    let n = (32 / bits) as usize;
    let w: Vec<u32> = words(bytes).collect();
    let per_row = cols.div_ceil(n);
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            field(w[r * per_row + c / n], c % n, bits)
        })
        .collect()
}

/// The inverse of `numerics::pack::pack_rows`: `[rows, cols]` signed values.
pub fn unpack_rows(bytes: &[u8], rows: usize, cols: usize, bits: u32) -> Vec<i32> {
    let n = (32 / bits) as usize;
    let w: Vec<u32> = words(bytes).collect();
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            field(w[(r / n) * cols + c], r % n, bits)
        })
        .collect()
}

/// `weight_shape` must hold `[rows, cols]`.
fn check_shape(ck: &Checkpoint, t: &TensorInfo, rows: usize, cols: usize) -> Result<()> {
    let got: Vec<i64> = ck
        .data(t)
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    if got != [rows as i64, cols as i64] {
        return Err(bad(format!(
            "{}: tensor {} holds {got:?}, expected [{rows}, {cols}]",
            ck.dir.display(),
            t.name
        )));
    }
    Ok(())
}

/// Rounds f32 values to `out` (round to nearest even) as a [`Dense`] matrix.
fn to_dense(w: Vec<f32>, out: DType) -> Dense {
    match out {
        DType::F16 => Dense::F16(
            w.iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect(),
        ),
        DType::F32 => Dense::F32(w),
        _ => Dense::Bf16(
            w.iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect(),
        ),
    }
}
