//! Which vLLM compressed-tensors scheme a config group's args select, as
//! `CompressedTensorsConfig._get_scheme_from_parts` does (vLLM 0.32,
//! `vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py`).
//! The input is what is on disk: the `weights` / `input_activations` args of a group of
//! `quantization_config`, so the check covers any recipe (presets and calibrated ones alike).

use crate::recipe::{Dynamic, QuantArgs, QuantType, Strategy};

/// The weight layout of an FP8 scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Weights {
    Tensor,
    Channel,
    /// `[block_n, block_k]`: rows (output features) × columns (input features).
    Block {
        n: usize,
        k: usize,
    },
}

/// A vLLM compressed-tensors scheme (`schemes/compressed_tensors_*.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VllmScheme {
    /// `CompressedTensorsW8A8Fp8`: FP8 weights and activations (FP8_DYNAMIC, FP8_BLOCK, FP8).
    /// On GPUs below sm_89 vLLM falls back to `CompressedTensorsW8A16Fp8` (FP8 Marlin,
    /// weight-only).
    W8A8Fp8 { weights: Fp8Weights },
    /// `CompressedTensorsW8A16Fp8`: FP8 weights, BF16 activations (FP8 Marlin).
    W8A16Fp8 { weights: Fp8Weights },
    /// `CompressedTensorsW8A8Int8`: int8 weights and activations (W8A8, SmoothQuant + GPTQ).
    W8A8Int8,
    /// `CompressedTensorsWNA16`: 4- or 8-bit integer weights, BF16 activations (W4A16,
    /// W4A16_ASYM, W8A16, GPTQ, AWQ). `group` is `None` for one scale per channel.
    Wna16 {
        bits: u32,
        group: Option<usize>,
        symmetric: bool,
        actorder: bool,
    },
    /// `CompressedTensorsW4A4Fp4(use_a16=True)`: NVFP4 weights, BF16 activations (NVFP4A16).
    W4A16Nvfp4,
    /// `CompressedTensorsW4A4Fp4`: NVFP4 weights and activations (NVFP4).
    W4A4Nvfp4,
    /// `CompressedTensorsW4A4Mxfp4`: MXFP4 weights (MXFP4A16; vLLM runs it weight-only).
    W4A16Mxfp4,
}

impl VllmScheme {
    /// vLLM's class name for the scheme.
    pub fn class_name(self) -> &'static str {
        match self {
            VllmScheme::W8A8Fp8 { .. } => "CompressedTensorsW8A8Fp8",
            VllmScheme::W8A16Fp8 { .. } => "CompressedTensorsW8A16Fp8",
            VllmScheme::W8A8Int8 => "CompressedTensorsW8A8Int8",
            VllmScheme::Wna16 { .. } => "CompressedTensorsWNA16",
            VllmScheme::W4A16Nvfp4 => "CompressedTensorsW4A4Fp4(use_a16)",
            VllmScheme::W4A4Nvfp4 => "CompressedTensorsW4A4Fp4",
            VllmScheme::W4A16Mxfp4 => "CompressedTensorsW4A4Mxfp4",
        }
    }

    /// The FP8 block `[n, k]` of a block-quantized FP8 scheme.
    pub fn fp8_block(self) -> Option<(usize, usize)> {
        match self {
            VllmScheme::W8A8Fp8 {
                weights: Fp8Weights::Block { n, k },
            }
            | VllmScheme::W8A16Fp8 {
                weights: Fp8Weights::Block { n, k },
            } => Some((n, k)),
            _ => None,
        }
    }
}

/// The scheme vLLM picks for a group's args and compression `format` (the group's, else the
/// config's), in `_get_scheme_from_parts`'s order, or the reason it finds none (vLLM's words).
pub fn classify(
    weights: &QuantArgs,
    inputs: Option<&QuantArgs>,
    format: &str,
) -> Result<VllmScheme, String> {
    let w = weights;
    let static_weights = w.dynamic == Dynamic::Static;
    let is_fp = |a: &QuantArgs, bits| a.kind == QuantType::Float && a.num_bits == bits;
    let nvfp4 = |a: &QuantArgs| {
        is_fp(a, 4)
            && a.strategy == Strategy::TensorGroup
            && a.group_size == Some(16)
            && a.symmetric
    };
    if nvfp4(w) {
        return match inputs {
            None => Ok(VllmScheme::W4A16Nvfp4),
            Some(i) if nvfp4(i) => Ok(VllmScheme::W4A4Nvfp4),
            Some(_) => Err(
                "For NVFP4 weights, input quantization must also be NVFP4 format, \
                            None for NVFP4A16"
                    .into(),
            ),
        };
    }
    if is_fp(w, 4) && w.strategy == Strategy::Group && w.group_size == Some(32) && w.symmetric {
        return Ok(VllmScheme::W4A16Mxfp4);
    }
    let channel_or_group = matches!(w.strategy, Strategy::Channel | Strategy::Group);
    if inputs.is_none() && channel_or_group && static_weights && format == "pack-quantized" {
        return wna16(w);
    }
    let act_format = matches!(
        format,
        "naive-quantized" | "int-quantized" | "float-quantized" | "nvfp4-pack-quantized"
    );
    if !act_format {
        return Err(no_scheme(w, inputs, format));
    }
    let fp8_weights_ok = is_fp(w, 8) && w.symmetric && static_weights;
    if let Some(i) = inputs.filter(|i| fp8_weights_ok && i.kind == QuantType::Float) {
        let dynamic = i.dynamic == Dynamic::Dynamic;
        if dynamic || (i.symmetric && i.strategy == Strategy::Tensor) {
            return fp8_weights(w).map(|weights| VllmScheme::W8A8Fp8 { weights });
        }
    }
    if w.kind == QuantType::Float && w.symmetric && static_weights {
        if let Ok(weights) = fp8_weights(w) {
            return Ok(VllmScheme::W8A16Fp8 { weights });
        }
    }
    if let Some(i) = inputs {
        let eight = w.num_bits == 8 && i.num_bits == 8;
        let per_channel_or_tensor = matches!(w.strategy, Strategy::Channel | Strategy::Tensor);
        let token = i.strategy == Strategy::Token && i.dynamic == Dynamic::Dynamic;
        let tensor = i.strategy == Strategy::Tensor && i.dynamic == Dynamic::Static;
        if eight && per_channel_or_tensor && w.symmetric && static_weights && (token || tensor) {
            return Ok(VllmScheme::W8A8Int8);
        }
    }
    Err(no_scheme(w, inputs, format))
}

/// `CompressedTensorsWNA16`'s own checks (its `__init__`).
fn wna16(w: &QuantArgs) -> Result<VllmScheme, String> {
    let group = match (w.strategy, w.group_size) {
        (Strategy::Channel, _) => None,
        (Strategy::Group, Some(g)) if g > 0 => Some(g as usize),
        _ => {
            return Err(
                "Pack-quantized format requires group quantization or channelwise \
                        quantization, but found no group size and strategy is not channelwise."
                    .into(),
            )
        }
    };
    if !matches!(w.num_bits, 4 | 8) {
        return Err(format!(
            "Unsupported num_bits = {}. Supported num_bits = [4, 8]",
            w.num_bits
        ));
    }
    if !w.symmetric && w.num_bits != 4 {
        return Err(format!(
            "Asymmetric quantization not supported for num_bits = {}. Supported: [4]",
            w.num_bits
        ));
    }
    Ok(VllmScheme::Wna16 {
        bits: w.num_bits,
        group,
        symmetric: w.symmetric,
        // vLLM keeps a g_idx only for actorder "group" (which llm-compressor 0.14 no longer
        // writes); "weight"/"static" orders only GPTQ's columns, not the stored groups.
        actorder: w.actorder.as_deref() == Some("group"),
    })
}

fn fp8_weights(w: &QuantArgs) -> Result<Fp8Weights, String> {
    match w.strategy {
        Strategy::Tensor => Ok(Fp8Weights::Tensor),
        Strategy::Channel => Ok(Fp8Weights::Channel),
        Strategy::Block => match w.block_structure {
            Some([n, k]) if n > 0 && k > 0 => Ok(Fp8Weights::Block {
                n: n as usize,
                k: k as usize,
            }),
            _ => Err("FP8 block weights without a block_structure".into()),
        },
        other => Err(format!(
            "FP8 weights with strategy {} have no vLLM scheme",
            other.as_str()
        )),
    }
}

/// vLLM's `NotImplementedError` wording, with the args that caused it.
fn no_scheme(w: &QuantArgs, inputs: Option<&QuantArgs>, format: &str) -> String {
    let args = |a: &QuantArgs| {
        let kind = match a.kind {
            QuantType::Int => "int",
            QuantType::Float => "float",
        };
        format!("{kind}{} {}", a.num_bits, a.strategy.as_str())
    };
    format!(
        "No compressed-tensors compatible scheme was found (weights {}, input activations {}, \
         format {format})",
        args(w),
        inputs.map_or_else(|| "none".to_string(), args)
    )
}
