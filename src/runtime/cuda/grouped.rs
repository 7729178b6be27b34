//! The weight-only grouped presets on the GPU (W4A16, W4A16_ASYM, W8A16, NVFP4A16,
//! MXFP4A16): their codes stay packed, 4 or 8 bits per weight, in the layout the
//! `gemv_*g` / `dequant_*g` kernels of `kernels/gemv.cu` read (see the comment there).
//!
//! A 70B W4A16 model is then 40.6 GB on the GPU (36.4 GB of packed Linears at 0.53 bytes
//! per weight, 4.2 GB of BF16 embedding and lm_head) instead of the 141.1 GB of its BF16
//! dequantization (more than one H200 holds), and a decode step reads about a quarter of the
//! bytes.
//! The arithmetic is unchanged: the kernels dequantize to exactly the BF16 values the CPU
//! loader computes (`runtime::weights`, "dequant"), so decode equals `gemv_bf16` on those
//! values bit for bit, and prefill dequantizes a Linear into a BF16 scratch matrix for the
//! dense GEMM.
//!
//! Scales (and zero-point offsets) of the integer formats are f32 per group, as the CPU
//! computes them (4 bytes per group: +3% over the codes at group 128). FP4 keeps the
//! checkpoint's byte per group (E4M3 for NVFP4, E8M0 for MXFP4), with a table of the 256
//! values the CPU computes for a byte: `e4m3(b) / global_scale` (one table per fused part,
//! whose global scales differ), `2^(b − 127)`. That is +12.5% over the codes at group 16
//! (f32 scales were +50%), +6.25% at group 32.

use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::numerics::e4m3_to_f32;
use crate::runtime::config::WeightScheme;
use crate::runtime::weights::{e8m0, unpack_rows};
use crate::{Error, Result};

/// How the kernels decode a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// 4-bit integers `u`, value `u − off`.
    Int4,
    /// [`GroupKind::Int4`] whose scales and offsets are all BF16 values (see
    /// [`GroupKind::for_values`]): the same values, dequantized in BF16x2 arithmetic.
    Int4Bf16,
    /// 8-bit integers `u`, value `u − off`.
    Int8,
    /// FP4 (E2M1) nibbles.
    Fp4,
}

impl GroupKind {
    pub fn bits(self) -> usize {
        match self {
            GroupKind::Int8 => 8,
            GroupKind::Int4 | GroupKind::Int4Bf16 | GroupKind::Fp4 => 4,
        }
    }

    /// The kind the kernels run for these scales and offsets: [`GroupKind::Int4Bf16`] (half
    /// the instructions per weight) when `self` is `Int4` and every scale and offset is a
    /// finite BF16 value, as a checkpoint's BF16 scales are.
    pub fn for_values<'a>(self, mut values: impl Iterator<Item = &'a f32>) -> GroupKind {
        let bf16 = |v: &f32| v.is_finite() && v.to_bits() & 0xFFFF == 0;
        match self {
            GroupKind::Int4 if values.all(bf16) => GroupKind::Int4Bf16,
            kind => kind,
        }
    }

    /// The (GEMV, dequantization) kernels.
    pub fn kernels(self) -> (&'static str, &'static str) {
        match self {
            GroupKind::Int4 => ("gemv_int4g", "dequant_int4g"),
            GroupKind::Int4Bf16 => ("gemv_int4h", "dequant_int4h"),
            GroupKind::Int8 => ("gemv_int8g", "dequant_int8g"),
            GroupKind::Fp4 => ("gemv_fp4g", "dequant_fp4g"),
        }
    }
}

/// The kind and group size a scheme runs with on the GPU, or `None` when it is uploaded
/// dequantized to BF16 (FP8_BLOCK, integer widths other than 4 and 8, groups that are not a
/// multiple of 8).
pub fn native(scheme: WeightScheme) -> Option<(GroupKind, usize)> {
    match scheme {
        WeightScheme::IntGroup { bits, group, .. } if group % 8 == 0 => match bits {
            4 => Some((GroupKind::Int4, group)),
            8 => Some((GroupKind::Int8, group)),
            _ => None,
        },
        WeightScheme::Nvfp4 => Some((GroupKind::Fp4, 16)),
        WeightScheme::Mxfp4 => Some((GroupKind::Fp4, 32)),
        _ => None,
    }
}

/// Columns rounded up to whole 128-weight superblocks.
pub fn padded(cols: usize) -> usize {
    cols.next_multiple_of(128)
}

/// Scales (and offsets) per row on the GPU.
pub fn groups_per_row(cols: usize, group: usize) -> usize {
    padded(cols).div_ceil(group)
}

/// Group scales `[rows, groups_per_row]` (0 past the last real group) as the kernels read
/// them.
#[derive(Debug, Clone)]
pub enum Scales {
    /// The value per group (integer formats).
    F32(Vec<f32>),
    /// A byte per group and the value of each byte (FP4).
    Codes { codes: Vec<u8>, table: Vec<f32> },
}

impl Scales {
    /// The f32 values (the integer formats' scales), or none.
    pub fn values(&self) -> &[f32] {
        match self {
            Scales::F32(v) => v,
            Scales::Codes { .. } => &[],
        }
    }
}

/// One grouped Linear `[rows, cols]` in the device layout.
#[derive(Debug, Clone)]
pub struct GroupedHost {
    pub kind: GroupKind,
    pub group: usize,
    pub rows: usize,
    pub cols: usize,
    /// `rows × padded(cols) · bits / 8` bytes.
    pub codes: Vec<u8>,
    pub scales: Scales,
    /// `2^(bits−1) + zero point` per group (asymmetric formats only).
    pub offsets: Option<Vec<f32>>,
}

/// Where weight `c` of a row lands in the device layout, in code units (nibbles or bytes)
/// from the row's start: superblock, thread slice, chunk, then the kernels' order in a chunk.
fn position(c: usize, bits: usize) -> usize {
    let (sb, kk) = (c / 128, c % 128);
    let (chunk, tig, e) = (kk / 32, (kk % 32) / 8, kk % 8);
    // 4-bit: weights 0..7 of a chunk sit in nibbles 0,4,1,5,2,6,3,7.
    let e = if bits == 4 { e / 2 + 4 * (e % 2) } else { e };
    sb * 128 + tig * 32 + chunk * 8 + e
}

/// The device bytes of `[rows, cols]` codes, `code(i)` the code of weight `i` (row-major);
/// rows in parallel (a 70B model has 70 billion codes to place).
pub fn layout(rows: usize, cols: usize, bits: usize, code: impl Fn(usize) -> u8 + Sync) -> Vec<u8> {
    use rayon::prelude::*;
    let row_bytes = padded(cols) * bits / 8;
    let mut out = vec![0u8; rows * row_bytes];
    out.par_chunks_mut(row_bytes)
        .enumerate()
        .for_each(|(r, row)| {
            for c in 0..cols {
                let (p, v) = (position(c, bits), code(r * cols + c));
                match bits {
                    4 => row[p / 2] |= (v & 0xF) << (4 * (p % 2)),
                    _ => row[p] = v,
                }
            }
        });
    out
}

/// `[rows, groups]` values spread over rows of `groups_per_row`, padded with 0.
fn spread<T: Copy + Default>(v: &[T], rows: usize, groups: usize, stride: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * stride];
    for r in 0..rows {
        out[r * stride..r * stride + groups].copy_from_slice(&v[r * groups..(r + 1) * groups]);
    }
    out
}

/// Reads the checked Linear `module` of a native `scheme` (see [`native`]) into the device
/// layout.
pub fn load(
    ck: &Checkpoint,
    scheme: WeightScheme,
    module: &str,
    rows: usize,
    cols: usize,
) -> Result<GroupedHost> {
    let (kind, group) = native(scheme).ok_or_else(|| {
        Error::Unsupported(format!("{module}: no packed CUDA path for {scheme:?}"))
    })?;
    let t = |suffix: &str| -> Result<&TensorInfo> {
        let name = format!("{module}.{suffix}");
        ck.get(&name).ok_or_else(|| {
            Error::Checkpoint(format!("{}: tensor {name} is missing", ck.dir.display()))
        })
    };
    let bits = kind.bits();
    let groups = cols / group;
    let stride = groups_per_row(cols, group);
    let (codes, scales, offsets) = match scheme {
        WeightScheme::IntGroup { symmetric, .. } => {
            let words = ck.data(t("weight_packed")?);
            let per_word = 32 / bits;
            let words_per_row = cols.div_ceil(per_word);
            let code = |i: usize| {
                let (r, c) = (i / cols, i % cols);
                let at = 4 * (r * words_per_row + c / per_word);
                let w =
                    u32::from_le_bytes([words[at], words[at + 1], words[at + 2], words[at + 3]]);
                ((w >> (bits * (c % per_word))) & ((1 << bits) - 1)) as u8
            };
            let s = t("weight_scale")?;
            let scales = crate::numerics::to_f32(s.dtype, ck.data(s))?;
            let offsets = match symmetric {
                true => None,
                false => {
                    let zp =
                        unpack_rows(ck.data(t("weight_zero_point")?), rows, groups, bits as u32);
                    let half = (1i32 << (bits - 1)) as f32;
                    Some(zp.iter().map(|&z| half + z as f32).collect::<Vec<f32>>())
                }
            };
            let scales = Scales::F32(spread(&scales, rows, groups, stride));
            (layout(rows, cols, bits, code), scales, offsets)
        }
        WeightScheme::Nvfp4 | WeightScheme::Mxfp4 => {
            let packed = ck.data(t("weight_packed")?);
            let code = |i: usize| (packed[i / 2] >> (4 * (i % 2))) & 0xF;
            let s = t("weight_scale")?;
            let bytes = ck.data(s);
            if bytes.len() != rows * groups {
                return Err(Error::Checkpoint(format!(
                    "{module}.weight_scale: {} bytes, expected {rows}x{groups}",
                    bytes.len()
                )));
            }
            let table = match scheme {
                WeightScheme::Nvfp4 => {
                    let g = t("weight_global_scale")?;
                    let gs = crate::numerics::to_f32(g.dtype, ck.data(g))?[0];
                    (0..=255u8).map(|b| e4m3_to_f32(b) / gs).collect()
                }
                _ => (0..=255u8).map(e8m0).collect(),
            };
            let codes = spread(bytes, rows, groups, stride);
            (
                layout(rows, cols, bits, code),
                Scales::Codes { codes, table },
                None,
            )
        }
        _ => unreachable!("native() accepts only the formats above"),
    };
    Ok(GroupedHost {
        kind,
        group,
        rows,
        cols,
        codes,
        scales,
        offsets: offsets.map(|o| spread(&o, rows, groups, stride)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight lands on its own code unit, and the kernels' chunk (j, tig) of a
    /// superblock is weights j*32 + tig*8 .. +7, read from slice tig.
    #[test]
    fn layout_is_a_permutation_in_slice_order() {
        for bits in [4, 8] {
            let cols = 256;
            let mut seen = vec![false; cols];
            for c in 0..cols {
                let p = position(c, bits);
                assert!(!seen[p], "bits {bits}: position {p} twice");
                seen[p] = true;
            }
            // Weight 40 = chunk 1, tig 1, element 0: slice 1 (32 units in), chunk 1 (8 in).
            assert_eq!(position(40, bits), 32 + 8);
            assert_eq!(position(128 + 40, bits), 128 + 32 + 8);
        }
        // 4-bit: weights 0 and 1 of a chunk are nibbles 0 and 4 (one BF16 pair), 7 is 7.
        assert_eq!((position(0, 4), position(1, 4), position(7, 4)), (0, 4, 7));
        assert_eq!((position(1, 8), position(7, 8)), (1, 7));
    }

    #[test]
    fn layout_packs_nibbles_low_first_and_pads_rows() {
        // One row of 8 weights with codes 0..7: a 64-byte padded row whose first word holds
        // 0,2,4,6 in nibbles 0..3 and 1,3,5,7 in nibbles 4..7.
        let bytes = layout(1, 8, 4, |i| i as u8);
        assert_eq!(bytes.len(), 64);
        assert_eq!(&bytes[..4], &[0x20, 0x64, 0x31, 0x75]);
        assert!(bytes[4..].iter().all(|&b| b == 0));
        let bytes = layout(2, 8, 8, |i| 10 + i as u8);
        assert_eq!(bytes.len(), 256);
        assert_eq!(&bytes[128..136], &[18, 19, 20, 21, 22, 23, 24, 25]);
    }

    /// The BF16x2 INT4 kernels only for INT4 weights whose scales and offsets are all finite
    /// BF16 values; one f32 scale, a NaN, or another format keeps the general kernels.
    #[test]
    fn bf16_int4_kernels_only_for_bf16_values() {
        let bf16 = [0.0f32, 1.0 / 512.0, -3.0, 8.0, 0.005004883];
        assert_eq!(GroupKind::Int4.for_values(bf16.iter()), GroupKind::Int4Bf16);
        for bad in [0.005f32, f32::NAN, f32::INFINITY] {
            let v: Vec<f32> = bf16.iter().copied().chain([bad]).collect();
            assert_eq!(
                GroupKind::Int4.for_values(v.iter()),
                GroupKind::Int4,
                "{bad}"
            );
        }
        for other in [GroupKind::Int8, GroupKind::Fp4] {
            assert_eq!(other.for_values(bf16.iter()), other);
        }
    }
}
