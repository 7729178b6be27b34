//! The preset schemes of compressed-tensors 0.19 (`PRESET_SCHEMES` in `quant_scheme.py`)
//! and the compression format compressed-tensors infers for a scheme.
//!
//! Every preset is recognised. Those qforge can produce carry a [`Scheme`] (FP8_DYNAMIC,
//! FP8_BLOCK, W8A8/INT8, W8A16, W4A16, W4A16_ASYM, NVFP4A16, MXFP4A16); the others are
//! rejected as "not supported yet". To support one, add a `Scheme` variant and set it in
//! [`PRESETS`]: its args and format are already encoded here.

use super::args::{Dynamic, QuantArgs, QuantType, Role, Strategy};
use crate::Result;

/// A quantization scheme qforge implements (one per preset; `INT8` is `W8A8`).
/// Also the `--synthetic-scheme` of `qforge bench` (lower-case names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scheme {
    /// FP8 E4M3 weights with one scale per output channel; FP8 activations quantized per
    /// token at run time.
    #[value(name = "fp8_dynamic")]
    Fp8Dynamic,
    /// FP8 E4M3 weights with one scale per 128×128 block; FP8 activations quantized per
    /// group of 128 at run time.
    #[value(name = "fp8_block")]
    Fp8Block,
    /// Symmetric int8 weights per output channel; int8 activations per token at run time.
    #[value(name = "w8a8")]
    W8A8,
    /// Symmetric int8 weights in groups of 128, packed into int32.
    #[value(name = "w8a16")]
    W8A16,
    /// Symmetric int4 weights in groups of 128, packed into int32.
    #[value(name = "w4a16")]
    W4A16,
    /// Asymmetric int4 weights (with int4 zero points) in groups of 128, packed into int32.
    #[value(name = "w4a16_asym")]
    W4A16Asym,
    /// FP4 E2M1 weights in groups of 16 with E4M3 scales under an F32 global scale.
    #[value(name = "nvfp4a16")]
    Nvfp4A16,
    /// FP4 E2M1 weights in groups of 32 with E8M0 (power-of-two) scales.
    #[value(name = "mxfp4a16")]
    Mxfp4A16,
}

impl Scheme {
    /// The compressed-tensors preset name.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Fp8Dynamic => "FP8_DYNAMIC",
            Scheme::Fp8Block => "FP8_BLOCK",
            Scheme::W8A8 => "W8A8",
            Scheme::W8A16 => "W8A16",
            Scheme::W4A16 => "W4A16",
            Scheme::W4A16Asym => "W4A16_ASYM",
            Scheme::Nvfp4A16 => "NVFP4A16",
            Scheme::Mxfp4A16 => "MXFP4A16",
        }
    }

    /// True for the weight-only schemes (BF16 activations).
    pub fn weight_only(self) -> bool {
        !matches!(self, Scheme::Fp8Dynamic | Scheme::Fp8Block | Scheme::W8A8)
    }

    /// The columns per weight scale of a GROUP / TENSOR_GROUP scheme: `in_features` must be
    /// a multiple of it. `None` for schemes without that requirement.
    pub fn group_size(self) -> Option<usize> {
        match self {
            Scheme::W8A16 | Scheme::W4A16 | Scheme::W4A16Asym => Some(128),
            Scheme::Nvfp4A16 => Some(16),
            Scheme::Mxfp4A16 => Some(32),
            Scheme::Fp8Dynamic | Scheme::Fp8Block | Scheme::W8A8 => None,
        }
    }
}

/// The weight / activation args of a preset.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetArgs {
    pub weights: Option<QuantArgs>,
    pub input_activations: Option<QuantArgs>,
}

/// One entry of compressed-tensors' `PRESET_SCHEMES`.
pub struct Preset {
    /// Upper-case name as in `PRESET_SCHEMES`.
    pub name: &'static str,
    /// `Some` when qforge implements it.
    pub scheme: Option<Scheme>,
    build: fn() -> Result<PresetArgs>,
}

impl Preset {
    /// The preset's args, with llm-compressor's observer defaults applied.
    pub fn args(&self) -> Result<PresetArgs> {
        (self.build)()
    }
}

/// All presets, in `PRESET_SCHEMES` order.
pub static PRESETS: &[Preset] = &[
    preset("UNQUANTIZED", None, unquantized),
    preset("W4A16_ASYM", Some(Scheme::W4A16Asym), w4a16_asym),
    preset("W8A8", Some(Scheme::W8A8), int8_w8a8),
    preset("INT8", Some(Scheme::W8A8), int8_w8a8),
    preset("W4AFP8", None, w4afp8),
    preset("FP8", None, fp8),
    preset("FP8_DYNAMIC", Some(Scheme::Fp8Dynamic), fp8_dynamic),
    preset("FP8_BLOCK", Some(Scheme::Fp8Block), fp8_block),
    preset("NVFP4A16", Some(Scheme::Nvfp4A16), nvfp4a16),
    preset("NVFP4", None, nvfp4),
    preset("MXFP4A16", Some(Scheme::Mxfp4A16), || mx(4, false)),
    preset("MXFP4", None, || mx(4, true)),
    preset("MXFP8A16", None, || mx(8, false)),
    preset("MXFP8", None, || mx(8, true)),
    preset("W2A4", None, || int_wnam(2, 4)),
    preset("W2A8", None, || int_wnam(2, 8)),
    preset("W2A16", None, || int_wnam(2, 16)),
    preset("W3A4", None, || int_wnam(3, 4)),
    preset("W3A8", None, || int_wnam(3, 8)),
    preset("W3A16", None, || int_wnam(3, 16)),
    preset("W4A4", None, || int_wnam(4, 4)),
    preset("W4A8", None, || int_wnam(4, 8)),
    preset("W4A16", Some(Scheme::W4A16), || int_wnam(4, 16)),
    preset("W5A8", None, || int_wnam(5, 8)),
    preset("W5A16", None, || int_wnam(5, 16)),
    preset("W6A8", None, || int_wnam(6, 8)),
    preset("W6A16", None, || int_wnam(6, 16)),
    preset("W7A8", None, || int_wnam(7, 8)),
    preset("W7A16", None, || int_wnam(7, 16)),
    preset("W8A16", Some(Scheme::W8A16), || int_wnam(8, 16)),
];

const fn preset(
    name: &'static str,
    scheme: Option<Scheme>,
    build: fn() -> Result<PresetArgs>,
) -> Preset {
    Preset {
        name,
        scheme,
        build,
    }
}

/// The preset called `name` (case-insensitive, as `is_preset_scheme`).
pub fn find_preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name.to_uppercase())
}

/// The preset of a scheme qforge implements.
pub fn preset_of(scheme: Scheme) -> &'static Preset {
    PRESETS
        .iter()
        .find(|p| p.scheme == Some(scheme))
        .expect("every Scheme has a preset")
}

/// The compression format compressed-tensors 0.19 infers for a Linear with these args
/// (`infer_module_format`: the first compressor in its priority list that accepts them).
pub fn infer_format(weights: Option<&QuantArgs>, inputs: Option<&QuantArgs>) -> &'static str {
    let Some(w) = weights else {
        return "dense";
    };
    let fp = w.kind == QuantType::Float;
    let int = w.kind == QuantType::Int;
    let uint8_scale = w.scale_dtype.as_deref() == Some("torch.uint8");
    if fp && w.num_bits == 4 && w.group_size == Some(32) {
        "mxfp4-pack-quantized"
    } else if fp && w.num_bits == 8 && w.group_size == Some(32) && uint8_scale {
        "mxfp8-quantized"
    } else if fp && w.num_bits == 4 && w.group_size == Some(16) {
        "nvfp4-pack-quantized"
    } else if int && inputs.is_some() {
        "int-quantized"
    } else if int
        && (1..=8).contains(&w.num_bits)
        && inputs.is_none_or(|i| i.kind != QuantType::Float)
    {
        "pack-quantized"
    } else if fp && inputs.is_some() {
        "float-quantized"
    } else {
        "naive-quantized"
    }
}

fn args(bits: u32, kind: QuantType, strategy: Strategy, dynamic: bool) -> QuantArgs {
    let mut a = QuantArgs::new(bits, kind, strategy);
    if dynamic {
        a.dynamic = Dynamic::Dynamic;
    }
    a
}

fn grouped(mut a: QuantArgs, group_size: i64) -> QuantArgs {
    a.group_size = Some(group_size);
    a
}

fn with(weights: QuantArgs, inputs: Option<QuantArgs>) -> Result<PresetArgs> {
    Ok(PresetArgs {
        weights: Some(weights.finish(Role::Weights)?),
        input_activations: inputs
            .map(|i| i.finish(Role::InputActivations))
            .transpose()?,
    })
}

fn unquantized() -> Result<PresetArgs> {
    Ok(PresetArgs {
        weights: None,
        input_activations: None,
    })
}

fn int_wnam(weight_bits: u32, act_bits: u32) -> Result<PresetArgs> {
    let w = grouped(
        args(weight_bits, QuantType::Int, Strategy::Group, false),
        128,
    );
    let i = (act_bits < 16).then(|| args(act_bits, QuantType::Int, Strategy::Token, true));
    with(w, i)
}

fn int8_w8a8() -> Result<PresetArgs> {
    let i = args(8, QuantType::Int, Strategy::Token, true);
    with(args(8, QuantType::Int, Strategy::Channel, false), Some(i))
}

fn w4a16_asym() -> Result<PresetArgs> {
    let mut w = grouped(args(4, QuantType::Int, Strategy::Group, false), 128);
    w.symmetric = false;
    with(w, None)
}

fn w4afp8() -> Result<PresetArgs> {
    let w = grouped(args(4, QuantType::Int, Strategy::Group, false), 128);
    with(w, Some(args(8, QuantType::Float, Strategy::Token, true)))
}

fn fp8() -> Result<PresetArgs> {
    let mut i = args(8, QuantType::Float, Strategy::Tensor, false);
    i.observer = Some("static_minmax".into());
    with(args(8, QuantType::Float, Strategy::Tensor, false), Some(i))
}

fn fp8_dynamic() -> Result<PresetArgs> {
    let i = args(8, QuantType::Float, Strategy::Token, true);
    with(args(8, QuantType::Float, Strategy::Channel, false), Some(i))
}

fn fp8_block() -> Result<PresetArgs> {
    let mut w = args(8, QuantType::Float, Strategy::Block, false);
    w.block_structure = Some([128, 128]);
    let i = grouped(args(8, QuantType::Float, Strategy::Group, true), 128);
    with(w, Some(i))
}

fn nvfp4_weights() -> QuantArgs {
    let mut w = grouped(args(4, QuantType::Float, Strategy::TensorGroup, false), 16);
    w.scale_dtype = Some("torch.float8_e4m3fn".into());
    w.zp_dtype = Some("torch.float8_e4m3fn".into());
    w
}

fn nvfp4a16() -> Result<PresetArgs> {
    with(nvfp4_weights(), None)
}

fn nvfp4() -> Result<PresetArgs> {
    let mut i = nvfp4_weights();
    i.dynamic = Dynamic::Local;
    i.observer = Some("static_minmax".into());
    with(nvfp4_weights(), Some(i))
}

/// MXFP4 / MXFP8: float weights in groups of 32 with uint8 (E8M0) scales; the full
/// variants add dynamic activations of the same kind.
fn mx(bits: u32, activations: bool) -> Result<PresetArgs> {
    let make = |dynamic| {
        let mut a = grouped(args(bits, QuantType::Float, Strategy::Group, dynamic), 32);
        a.scale_dtype = Some("torch.uint8".into());
        a.zp_dtype = Some("torch.uint8".into());
        a
    };
    with(make(false), activations.then(|| make(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds() {
        for p in PRESETS {
            let a = p.args().unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let _ = infer_format(a.weights.as_ref(), a.input_activations.as_ref());
        }
        assert!(find_preset("fp8_dynamic").is_some_and(|p| p.scheme == Some(Scheme::Fp8Dynamic)));
        assert!(find_preset("FP16").is_none());
    }

    #[test]
    fn formats_match_the_fixtures() {
        let want = [
            ("FP8_DYNAMIC", "float-quantized"),
            ("FP8_BLOCK", "float-quantized"),
            ("W8A8", "int-quantized"),
            ("W8A16", "pack-quantized"),
            ("W4A16", "pack-quantized"),
            ("W4A16_ASYM", "pack-quantized"),
            ("NVFP4A16", "nvfp4-pack-quantized"),
            ("MXFP4A16", "mxfp4-pack-quantized"),
        ];
        for (name, format) in want {
            let a = find_preset(name).unwrap().args().unwrap();
            assert_eq!(
                infer_format(a.weights.as_ref(), a.input_activations.as_ref()),
                format
            );
        }
    }
}
