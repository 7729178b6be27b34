//! The quantization grid of a GPTQ weight: scales and zero points from the original weight
//! (llm-compressor's weight observer runs before GPTQ), the fake quantization of one value
//! inside the column loop, and the codes the compressor derives from the result.

use crate::checkpoint::DType;
use crate::numerics::{self, Fp8Rounding, IntParams, E4M3_MAX};
use crate::recipe::{QuantArgs, QuantType, Strategy};
use crate::{Error, Result};
use half::bf16;

/// The number format of the codes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    /// `group` is the number of columns per scale (`cols` for channel and tensor).
    Int(IntParams),
    Fp8,
}

/// Scales and zero points of a `rows × cols` weight, and how a column maps to them.
#[derive(Debug, Clone)]
pub(super) struct Grid {
    format: Format,
    tensor: bool,
    rows: usize,
    cols: usize,
    /// Columns per scale (`cols` for channel and tensor).
    group: usize,
    /// BF16 values: `rows × cols/group` (one for the tensor strategy).
    pub scales: Vec<f32>,
    /// Integer zero points, same shape as `scales` (all 0 when symmetric or FP8).
    pub zps: Vec<f32>,
}

impl Grid {
    /// The observer (`memoryless_minmax`) on the original weight, as the data-free path
    /// computes it.
    pub fn observe(w: &[f32], rows: usize, cols: usize, args: &QuantArgs) -> Result<Grid> {
        let (format, group, tensor) = layout(cols, args)?;
        let mut grid = Grid {
            format,
            tensor,
            rows,
            cols,
            group,
            scales: Vec::new(),
            zps: Vec::new(),
        };
        let chunks: Vec<&[f32]> = if tensor {
            vec![w]
        } else {
            w.chunks(group).collect()
        };
        for chunk in chunks {
            let (s, zp) = match format {
                Format::Int(p) => numerics::group_qparams(DType::BF16, p, chunk),
                Format::Fp8 => (numerics::fp8_scale(DType::BF16, absmax(chunk)), 0.0),
            };
            grid.scales.push(s);
            grid.zps.push(zp);
        }
        Ok(grid)
    }

    /// Index into `scales` of weight column `col` in row `row`.
    #[inline]
    pub fn index(&self, row: usize, col: usize) -> usize {
        if self.tensor {
            0
        } else {
            row * (self.cols / self.group) + col / self.group
        }
    }

    /// `fake_quantize(w)` with the scale at `k`, as compressed-tensors' `_quantize_dequantize`
    /// computes it for an f32 `w` and a BF16 scale: `w / s (+ zp)` in f32, clamp, round to
    /// the grid, then `(q - zp) * s` in BF16.
    #[inline]
    pub fn fake_quantize(&self, w: f32, k: usize) -> f32 {
        let (s, zp) = (self.scales[k], self.zps[k]);
        let q = match self.format {
            Format::Int(p) => {
                let lo = -((1u32 << (p.bits - 1)) as f32);
                let hi = ((1u32 << (p.bits - 1)) - 1) as f32;
                let mut x = w / s;
                if !p.symmetric {
                    x += zp;
                }
                let q = x.clamp(lo, hi).round_ties_even();
                if p.symmetric {
                    q
                } else {
                    bf16_round(q - zp)
                }
            }
            Format::Fp8 => {
                let x = (w / s).clamp(-E4M3_MAX, E4M3_MAX);
                numerics::e4m3_to_f32(numerics::f32_to_e4m3(x))
            }
        };
        bf16_round(q * s)
    }

    /// The codes the compressor writes for the fake-quantized BF16 weight `deq` (BF16 bits,
    /// `rows × cols`): the data-free path's rounding with this grid's scales (eager CPU
    /// path). Int codes are `i8` bytes, FP8 codes E4M3 bytes; both unpacked.
    pub fn codes(&self, deq: &[u16]) -> Vec<u8> {
        let mut out = vec![0u8; deq.len()];
        let mut buf = Vec::with_capacity(self.group);
        let mut bytes = Vec::with_capacity(2 * self.group);
        for (r, (row, q)) in deq
            .chunks(self.cols)
            .zip(out.chunks_mut(self.cols))
            .enumerate()
        {
            for (g, (src, dst)) in row
                .chunks(self.group)
                .zip(q.chunks_mut(self.group))
                .enumerate()
            {
                let k = self.index(r, g * self.group);
                let (s, zp) = (self.scales[k], self.zps[k]);
                match self.format {
                    Format::Int(p) => {
                        buf.clear();
                        buf.extend(src.iter().map(|&b| bf16::from_bits(b).to_f32()));
                        numerics::quantize_group(DType::BF16, true, p, &buf, s, zp, dst);
                    }
                    Format::Fp8 => {
                        bytes.clear();
                        bytes.extend(src.iter().flat_map(|b| b.to_le_bytes()));
                        numerics::fp8_codes(DType::BF16, &bytes, s, Fp8Rounding::Eager, dst);
                    }
                }
            }
        }
        out
    }

    /// The scales as BF16 bits, in compressed-tensors' `weight_scale` order.
    pub fn scale_bits(&self) -> Vec<u16> {
        self.scales
            .iter()
            .map(|&s| bf16::from_f32(s).to_bits())
            .collect()
    }

    /// The zero points as `i8` (`weight_zero_point`, unpacked).
    pub fn zero_points(&self) -> Vec<i8> {
        self.zps.iter().map(|&z| z as i8).collect()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// The format, columns per scale and tensor flag of `args`; an error for what GPTQ does not
/// quantize here.
fn layout(cols: usize, args: &QuantArgs) -> Result<(Format, usize, bool)> {
    let unsupported = |what: String| Err(Error::Calibration(format!("GPTQ: {what}")));
    let group = match args.strategy {
        Strategy::Channel | Strategy::Tensor => cols,
        Strategy::Group => match args.group_size {
            Some(g) if g > 0 && cols % g as usize == 0 => g as usize,
            g => {
                return unsupported(format!(
                    "group_size {g:?} does not divide the {cols} input features"
                ))
            }
        },
        s => {
            return unsupported(format!(
                "the '{}' weight strategy is not supported",
                s.as_str()
            ))
        }
    };
    let tensor = args.strategy == Strategy::Tensor;
    let format = match (args.kind, args.num_bits) {
        (QuantType::Int, bits @ 2..=8) => Format::Int(IntParams {
            bits,
            group: if tensor { cols } else { group },
            symmetric: args.symmetric,
        }),
        (QuantType::Float, 8) if args.strategy != Strategy::Group => Format::Fp8,
        (kind, bits) => {
            return unsupported(format!(
                "{bits}-bit {kind:?} weights with the '{}' strategy are not supported",
                args.strategy.as_str()
            ))
        }
    };
    Ok((format, group, tensor))
}

fn absmax(w: &[f32]) -> f32 {
    w.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// `bf16(x)` widened back to f32 (round to nearest even).
#[inline]
pub(super) fn bf16_round(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}
