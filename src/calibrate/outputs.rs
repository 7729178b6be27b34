//! The tensors a calibrated Linear becomes, as compressed-tensors 0.19 saves them, from its
//! config group's args: known before any data is computed, so that the shard headers can
//! be written first and each layer's tensors stored the moment they are final.

use super::forward::Proj;
use super::LayerTensor;
use crate::checkpoint::writer::OutTensor;
use crate::checkpoint::DType;
use crate::numerics::pack;
use crate::recipe::{infer_format, ConfigGroup, Dynamic, QuantArgs, QuantType, Strategy};
use crate::{Error, Result};

/// How one calibrated Linear is quantized and stored.
#[derive(Debug, Clone)]
pub struct LinearPlan {
    pub proj: Proj,
    pub weights: QuantArgs,
    /// Whether the input gets a static `input_scale` (observed with `static_minmax`).
    pub static_input: bool,
    pub format: &'static str,
}

impl LinearPlan {
    pub fn new(proj: Proj, group: &ConfigGroup, module: &str) -> Result<LinearPlan> {
        let weights = group.weights.clone().ok_or_else(|| {
            Error::Unsupported(format!("{module}: a config group without weights"))
        })?;
        let inputs = group.input_activations.as_ref();
        let static_input = inputs.is_some_and(|a| a.dynamic == Dynamic::Static);
        if let Some(a) = inputs.filter(|_| static_input) {
            if a.strategy != Strategy::Tensor || a.kind != QuantType::Float || a.num_bits != 8 {
                return Err(Error::Unsupported(format!(
                    "{module}: static input activations other than FP8 per tensor are not \
                     supported yet"
                )));
            }
        }
        let format = infer_format(Some(&weights), inputs);
        let supported = match (weights.kind, weights.num_bits, weights.strategy) {
            (QuantType::Float, 8, Strategy::Tensor | Strategy::Channel) => true,
            // Asymmetric weights keep zero points, stored packed (pack-quantized) only.
            (QuantType::Int, 4 | 8, Strategy::Channel | Strategy::Group) => {
                weights.symmetric || format == "pack-quantized"
            }
            _ => false,
        };
        if !supported {
            return Err(Error::Unsupported(format!(
                "{module}: calibrated {}-bit {} weights with strategy {:?}{} are not supported \
                 yet",
                weights.num_bits,
                weights.kind.as_str(),
                weights.strategy,
                if weights.symmetric {
                    ""
                } else {
                    " (asymmetric)"
                }
            )));
        }
        Ok(LinearPlan {
            proj,
            weights,
            static_input,
            format,
        })
    }

    fn groups(&self, cols: usize) -> usize {
        match (self.weights.strategy, self.weights.group_size) {
            (Strategy::Group, Some(g)) if g > 0 => cols.div_ceil(g as usize),
            (Strategy::Tensor, _) => 0,
            _ => 1,
        }
    }

    /// The output tensors of `<module>.weight` (`[rows, cols]`), BF16 scales.
    pub fn outputs(&self, module: &str, rows: usize, cols: usize) -> Vec<OutTensor> {
        let out = |s: &str, d: DType, shape: Vec<usize>| {
            OutTensor::new(format!("{module}.{s}"), d, shape)
        };
        let scale_shape = match self.groups(cols) {
            0 => vec![1],
            g => vec![rows, g],
        };
        let mut v = match (self.weights.kind, self.format) {
            (QuantType::Float, _) => vec![
                out("weight", DType::F8_E4M3, vec![rows, cols]),
                out("weight_scale", DType::BF16, scale_shape),
            ],
            (QuantType::Int, "pack-quantized") => {
                let bits = self.weights.num_bits;
                let mut v = vec![
                    out("weight_scale", DType::BF16, scale_shape.clone()),
                    out("weight_shape", DType::I64, vec![2]),
                    out(
                        "weight_packed",
                        DType::I32,
                        vec![rows, pack::packed_len(cols, bits)],
                    ),
                ];
                if !self.weights.symmetric {
                    let zp_shape = vec![pack::packed_len(rows, bits), scale_shape[1]];
                    v.push(out("weight_zero_point", DType::I32, zp_shape));
                }
                v
            }
            (QuantType::Int, _) => vec![
                out("weight", DType::I8, vec![rows, cols]),
                out("weight_scale", DType::BF16, scale_shape),
            ],
        };
        if self.static_input {
            v.push(out("input_scale", DType::BF16, vec![1]));
        }
        v
    }

    /// The stored tensors of a quantized weight from its codes (E4M3 or i8 bytes,
    /// `rows × cols`), its scales (BF16 bits) and its zero points (i8 bytes, like the
    /// scales; ignored when symmetric).
    pub fn weight_tensors(
        &self,
        module: &str,
        rows: usize,
        cols: usize,
        codes: &[u8],
        scales: &[u16],
        zero_points: &[u8],
    ) -> Vec<LayerTensor> {
        let scale_bytes: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut outs = self.outputs(module, rows, cols);
        outs.retain(|o| !o.name.ends_with(".input_scale"));
        outs.into_iter()
            .map(|o| {
                let data = match o.name.rsplit('.').next().unwrap_or("") {
                    "weight_scale" => scale_bytes.clone(),
                    "weight_shape" => [rows as i64, cols as i64]
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect(),
                    "weight_zero_point" => {
                        let (bits, groups) = (self.weights.num_bits, self.groups(cols));
                        let mut p = vec![0u8; pack::packed_len(rows, bits) * groups * 4];
                        pack::pack_rows(zero_points, rows, groups, bits, &mut p);
                        p
                    }
                    "weight_packed" => {
                        let bits = self.weights.num_bits;
                        let mut p = vec![0u8; rows * pack::packed_len(cols, bits) * 4];
                        pack::pack_columns(codes, rows, cols, bits, &mut p);
                        p
                    }
                    _ => codes.to_vec(),
                };
                LayerTensor {
                    name: o.name,
                    dtype: o.dtype,
                    shape: o.shape,
                    data,
                }
            })
            .collect()
    }
}
