//! The output layout: which tensors the quantized checkpoint holds, in state-dict order, and
//! how each is made from the input (copied, or produced by a scheme's weight transform).
//! Cross-tensor rules are settled here, before anything is written: the group-size
//! divisibility check and the NVFP4 global scales shared by fused projections.

mod checks;

pub use checks::check_source;

use crate::checkpoint::writer::OutTensor;
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::numerics::pack::packed_len;
use crate::recipe::{arch, QuantPlan, Scheme};
use crate::{Error, Result};
use std::cmp::Ordering;

/// How an output tensor is produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Copied byte for byte from the input tensor.
    Copy,
    /// A quantized Linear weight: `<module>.weight` becomes the tensors listed in
    /// `outputs` (for FP8_DYNAMIC: `weight` F8_E4M3 and `weight_scale`). `global_scale` is
    /// the NVFP4 global scale (computed over the fused projections), `None` otherwise.
    Quantize {
        scheme: Scheme,
        global_scale: Option<f32>,
    },
}

/// One input tensor and what becomes of it.
#[derive(Debug, Clone)]
pub struct Item {
    pub input: TensorInfo,
    pub transform: Transform,
    /// The output tensors this input produces, in state-dict order.
    pub outputs: Vec<OutTensor>,
}

/// The whole output, before any data is computed.
#[derive(Debug, Clone)]
pub struct OutputLayout {
    pub items: Vec<Item>,
    /// Full names of the Linear modules left unquantized, in module order.
    pub ignored: Vec<String>,
    pub quantized: usize,
    pub warnings: Vec<String>,
}

impl OutputLayout {
    /// Every output tensor in state-dict order (the order shards are cut in).
    pub fn out_tensors(&self) -> Vec<OutTensor> {
        self.items
            .iter()
            .flat_map(|i| i.outputs.iter().cloned())
            .collect()
    }
}

/// Lays out the output of quantizing `ck` with `plan`.
pub fn plan_layout(ck: &Checkpoint, plan: &QuantPlan) -> Result<OutputLayout> {
    checks::check_source(ck)?;
    let shapes: Vec<(String, Vec<usize>)> = ck
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let (modules, warning) = arch::linear_modules(&ck.config, &shapes)?;
    let groups = plan.assign(&modules)?;
    let tied = ck
        .config
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);

    let mut ignored = Vec::new();
    let mut quantize = std::collections::HashMap::new();
    for (module, group) in modules.iter().zip(&groups) {
        match group {
            Some(g) => {
                // Groups without a data-free scheme exist only in calibrated recipes.
                let group = &plan.groups[*g];
                let scheme = group.preset.ok_or_else(|| {
                    Error::Unsupported(format!(
                        "config group {} needs the calibration pipeline",
                        group.name
                    ))
                })?;
                quantize.insert(format!("{module}.weight"), scheme);
            }
            None => ignored.push(module.clone()),
        }
    }

    let mut inputs: Vec<&TensorInfo> = ck.tensors().iter().filter(|t| keep(t, tied)).collect();
    inputs.sort_by(|a, b| state_dict_cmp(&a.name, &b.name));
    let mut items = Vec::with_capacity(inputs.len());
    for t in inputs {
        let item = match quantize.get(&t.name) {
            Some(&scheme) => quantized_item(t, scheme, &ck.files()[t.file])?,
            None => Item {
                input: t.clone(),
                transform: Transform::Copy,
                outputs: vec![OutTensor::new(t.name.clone(), t.dtype, t.shape.clone())],
            },
        };
        items.push(item);
    }
    if tied && quantize.contains_key("lm_head.weight") {
        return Err(Error::Unsupported(
            "lm_head is tied to the embeddings and cannot be quantized on its own; add lm_head to ignore".into(),
        ));
    }
    let quantized = quantize.len();
    for name in quantize.keys() {
        if ck.get(name).is_none() && !(tied && name == "lm_head.weight") {
            return Err(Error::Checkpoint(format!(
                "tensor {name} is missing from the checkpoint"
            )));
        }
    }
    checks::check_divisibility(&quantize, &modules, ck, plan.bypass_divisibility_checks)?;
    let global_scales = checks::nvfp4_global_scales(&quantize, &modules, ck)?;
    for item in &mut items {
        if let Transform::Quantize { global_scale, .. } = &mut item.transform {
            *global_scale = global_scales.get(&item.input.name).copied();
        }
    }
    let mut warnings: Vec<String> = warning.into_iter().collect();
    if quantized == 0 {
        // Written as asked (llm-compressor too saves such a model), but rarely what was meant.
        let targets: Vec<&str> = plan
            .groups
            .iter()
            .flat_map(|g| &g.targets)
            .map(|t| t.as_str())
            .collect();
        warnings.push(format!(
            "nothing is quantized: the recipe's targets {targets:?} match none of the model's {} \
             Linear modules, or all of them are ignored",
            modules.len()
        ));
    }
    Ok(OutputLayout {
        items,
        ignored,
        quantized,
        warnings,
    })
}

/// Tensors that a save through transformers would not write: the tied `lm_head.weight`
/// (one shared table) and non-persistent rotary buffers some old checkpoints carry.
fn keep(t: &TensorInfo, tied: bool) -> bool {
    let tied_head = tied && t.name == "lm_head.weight";
    !tied_head && !t.name.ends_with("rotary_emb.inv_freq")
}

fn quantized_item(t: &TensorInfo, scheme: Scheme, file: &std::path::Path) -> Result<Item> {
    if !t.dtype.is_float_weight() {
        return Err(Error::Quantize(format!(
            "{}: tensor {} is {}; a Linear weight to quantize must be BF16, F16 or F32",
            file.display(),
            t.name,
            t.dtype.name()
        )));
    }
    if t.shape.len() != 2 {
        return Err(Error::Quantize(format!(
            "{}: tensor {} has shape {:?}; a Linear weight must be 2-D",
            file.display(),
            t.name,
            t.shape
        )));
    }
    Ok(Item {
        input: t.clone(),
        transform: Transform::Quantize {
            scheme,
            global_scale: None,
        },
        outputs: scheme_outputs(t, scheme),
    })
}

/// The tensors a quantized `<module>.weight` becomes, in the order compressed-tensors'
/// compressors leave them in the module (which only matters for where shards are cut).
/// Scales of FP8 and integer schemes are in the weight's dtype.
fn scheme_outputs(t: &TensorInfo, scheme: Scheme) -> Vec<OutTensor> {
    let prefix = t.name.strip_suffix(".weight").unwrap_or(&t.name);
    let out = |suffix: &str, dtype: DType, shape: Vec<usize>| {
        OutTensor::new(format!("{prefix}.{suffix}"), dtype, shape)
    };
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let groups = |g: usize| cols.div_ceil(g);
    match scheme {
        Scheme::Fp8Dynamic => vec![
            out("weight", DType::F8_E4M3, vec![rows, cols]),
            out("weight_scale", t.dtype, vec![rows, 1]),
        ],
        Scheme::Fp8Block => vec![
            out("weight", DType::F8_E4M3, vec![rows, cols]),
            out(
                "weight_scale",
                t.dtype,
                vec![rows.div_ceil(128), groups(128)],
            ),
        ],
        Scheme::W8A8 => vec![
            out("weight", DType::I8, vec![rows, cols]),
            out("weight_scale", t.dtype, vec![rows, 1]),
        ],
        Scheme::W8A16 | Scheme::W4A16 | Scheme::W4A16Asym => {
            let bits = int_bits(scheme);
            let mut v = vec![
                out("weight_scale", t.dtype, vec![rows, groups(128)]),
                out("weight_shape", DType::I64, vec![2]),
                out(
                    "weight_packed",
                    DType::I32,
                    vec![rows, packed_len(cols, bits)],
                ),
            ];
            if scheme == Scheme::W4A16Asym {
                let zp_rows = packed_len(rows, bits);
                v.push(out(
                    "weight_zero_point",
                    DType::I32,
                    vec![zp_rows, groups(128)],
                ));
            }
            v
        }
        Scheme::Nvfp4A16 => vec![
            out("weight_global_scale", DType::F32, vec![1]),
            out("weight_scale", DType::F8_E4M3, vec![rows, groups(16)]),
            out("weight_packed", DType::U8, vec![rows, cols.div_ceil(2)]),
        ],
        Scheme::Mxfp4A16 => vec![
            out("weight_scale", DType::U8, vec![rows, groups(32)]),
            out("weight_packed", DType::U8, vec![rows, cols.div_ceil(2)]),
        ],
    }
}

/// Bits per value of an integer scheme.
pub fn int_bits(scheme: Scheme) -> u32 {
    match scheme {
        Scheme::W4A16 | Scheme::W4A16Asym => 4,
        _ => 8,
    }
}

/// Rank of a name component in transformers' module registration order for Llama-family
/// models; unknown components sort after known ones, by name.
fn component_rank(c: &str) -> usize {
    const ORDER: &[&str] = &[
        "model",
        "embed_tokens",
        "layers",
        "self_attn",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "q_norm",
        "k_norm",
        "mlp",
        "gate_proj",
        "up_proj",
        "down_proj",
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "norm",
        "lm_head",
        "weight",
        "bias",
    ];
    ORDER.iter().position(|&k| k == c).unwrap_or(ORDER.len())
}

/// Orders tensor names as a Llama-family `state_dict()` lists them: component by component,
/// numbers numerically, known module names by registration order.
pub fn state_dict_cmp(a: &str, b: &str) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x == y => continue,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => component_rank(x)
                        .cmp(&component_rank(y))
                        .then_with(|| x.cmp(y)),
                };
                return ord;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::state_dict_cmp;

    #[test]
    fn state_dict_order_is_module_order() {
        let mut names = vec![
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.10.mlp.down_proj.weight",
            "model.layers.2.input_layernorm.weight",
            "model.layers.2.mlp.gate_proj.weight",
            "model.layers.2.self_attn.v_proj.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "model.embed_tokens.weight",
        ];
        names.sort_by(|a, b| state_dict_cmp(a, b));
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.self_attn.v_proj.weight",
                "model.layers.2.mlp.gate_proj.weight",
                "model.layers.2.input_layernorm.weight",
                "model.layers.10.mlp.down_proj.weight",
                "model.norm.weight",
                "lm_head.weight",
            ]
        );
    }
}
