//! compressed-tensors config groups: which weight format a quantized Linear has, and which
//! group applies to a module (`targets` / `ignore` matching).
//!
//! The formats are the ones `qforge quantize` writes (docs/presets.md):
//!
//! | preset | group `format` | weights `type`, `num_bits`, `strategy` |
//! |---|---|---|
//! | FP8_DYNAMIC | float-quantized | float 8 channel |
//! | FP8 (static, llm-compressor's `FP8` scheme) | float-quantized | float 8 tensor |
//! | FP8_BLOCK | float-quantized | float 8 block (`block_structure` [128,128]) |
//! | W8A8 | int-quantized | int 8 channel, symmetric |
//! | W8A16, W4A16, W4A16_ASYM | pack-quantized | int 8/4 group (`group_size`) |
//! | NVFP4A16 | nvfp4-pack-quantized | float 4 tensor_group 16 |
//! | MXFP4A16 | mxfp4-pack-quantized | float 4 group 32 |
//!
//! A top-level `format` of `mixed-precision` means each group names its own.

use super::{bad, unsupported, Quantization};
use crate::recipe::matcher::Matcher;
use crate::{Error, Result};
use serde_json::Value;

/// The stored format of a quantized Linear's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightScheme {
    /// F8_E4M3 `weight` + one scale per output row (FP8_DYNAMIC, in a mixed config).
    Fp8Channel,
    /// F8_E4M3 `weight` + one scale for the whole tensor (llm-compressor's `FP8` scheme, whose
    /// activations have a static per-tensor `input_scale`).
    Fp8Tensor,
    /// F8_E4M3 `weight` + one scale per `[block_rows, block_cols]` block (FP8_BLOCK).
    Fp8Block {
        block_rows: usize,
        block_cols: usize,
    },
    /// I8 `weight` + one scale per output row (W8A8).
    Int8Channel,
    /// `bits`-bit integer codes packed into I32 `weight_packed` along the columns, one scale
    /// (and, when asymmetric, one packed zero point) per `group` columns.
    IntGroup {
        bits: u32,
        group: usize,
        symmetric: bool,
    },
    /// FP4 E2M1 nibbles, E4M3 scales per 16 columns, an F32 global scale (NVFP4A16).
    Nvfp4,
    /// FP4 E2M1 nibbles, E8M0 scales (as U8) per 32 columns (MXFP4A16).
    Mxfp4,
}

/// One config group: the modules it targets and their weight format.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemeGroup {
    pub name: String,
    /// `Linear` (every Linear), exact module names, or `re:` regexes.
    pub targets: Vec<String>,
    pub scheme: WeightScheme,
    /// The input activations have a static per-tensor scale (`input_activations.dynamic:
    /// false`), stored as `{module}.input_scale`.
    pub static_input: bool,
}

/// Whether a compressed-tensors target/ignore pattern matches the Linear `module`, by the
/// recipe's own rules ([`Matcher`]: `Linear` and `Module` match every Linear, `re:X` is a
/// regex matched at the start of the name as Python's `re.match`, with look-around; anything
/// else is an exact module name).
pub fn pattern_matches(pat: &str, module: &str) -> Result<bool> {
    let in_config = |e: Error| match e {
        Error::Recipe(m) => bad(format!("quantization_config pattern: {m}")),
        other => other,
    };
    Matcher::new(pat)
        .and_then(|m| m.matches(module))
        .map_err(in_config)
}

/// How specific a matching pattern is: an exact name beats a regex, which beats `Linear`.
fn specificity(pat: &str) -> u8 {
    match pat {
        "Linear" | "Module" => 0,
        p if p.starts_with("re:") => 1,
        _ => 2,
    }
}

impl Quantization {
    /// The weight format of the Linear `module`: `None` when it is not quantized (no
    /// quantization, listed in `ignore`, or matched by no group). When several groups match,
    /// the most specific target wins (exact name, then regex, then `Linear`), then the first.
    pub fn scheme_for(&self, module: &str) -> Result<Option<WeightScheme>> {
        Ok(self.group_for(module)?.map(|(scheme, _)| scheme))
    }

    /// Whether the Linear `module` reads a static per-tensor `input_scale` (its group's
    /// `input_activations` are `dynamic: false`).
    pub fn static_input_for(&self, module: &str) -> Result<bool> {
        Ok(self.group_for(module)?.is_some_and(|(_, s)| s))
    }

    /// The weight format and static-input flag of the group that applies to `module`.
    fn group_for(&self, module: &str) -> Result<Option<(WeightScheme, bool)>> {
        let (groups, ignore) = match self {
            Quantization::None => return Ok(None),
            Quantization::Fp8Dynamic { ignore } => (None, ignore),
            Quantization::Compressed { groups, ignore } => (Some(groups), ignore),
        };
        for pat in ignore {
            if pattern_matches(pat, module)? {
                return Ok(None);
            }
        }
        let Some(groups) = groups else {
            return Ok(Some((WeightScheme::Fp8Channel, false)));
        };
        let mut best: Option<(u8, &SchemeGroup)> = None;
        for g in groups {
            for t in &g.targets {
                let rank = specificity(t);
                if best.is_none_or(|(b, _)| rank > b) && pattern_matches(t, module)? {
                    best = Some((rank, g));
                }
            }
        }
        Ok(best.map(|(_, g)| (g.scheme, g.static_input)))
    }

    /// Whether any group has static input activations.
    pub fn has_static_inputs(&self) -> bool {
        matches!(self, Quantization::Compressed { groups, .. } if groups.iter().any(|g| g.static_input))
    }
}

/// Parses one config group; `top_format` is `quantization_config.format`.
pub(super) fn parse_group(name: &str, g: &Value, top_format: &str) -> Result<SchemeGroup> {
    let at = format!("quantization_config.config_groups.{name}");
    let targets = g
        .get("targets")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| bad(format!("{at}.targets must list strings")))?;
    if g.get("output_activations").is_some_and(|o| !o.is_null()) {
        return Err(unsupported(format!(
            "{at}.output_activations is not supported"
        )));
    }
    let format = match g.get("format").and_then(Value::as_str) {
        Some(f) => f,
        None if top_format != "mixed-precision" => top_format,
        None => return Err(bad(format!("{at}.format is missing (mixed-precision)"))),
    };
    let w = g
        .get("weights")
        .filter(|w| !w.is_null())
        .ok_or_else(|| unsupported(format!("{at}.weights is missing")))?;
    let scheme = weight_scheme(&format!("{at}.weights"), w, format)?;
    let static_input = check_activations(&at, g.get("input_activations"), scheme)?;
    Ok(SchemeGroup {
        name: name.to_string(),
        targets,
        scheme,
        static_input,
    })
}

/// The weight format from a `weights` args block and the group's `format`.
fn weight_scheme(at: &str, w: &Value, format: &str) -> Result<WeightScheme> {
    let kind = w.get("type").and_then(Value::as_str).unwrap_or("?");
    let bits = w.get("num_bits").and_then(Value::as_u64).unwrap_or(0);
    let strategy = w.get("strategy").and_then(Value::as_str).unwrap_or("?");
    let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
    let group = w.get("group_size").and_then(Value::as_u64).unwrap_or(0) as usize;
    let block = w
        .get("block_structure")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>());
    let scheme = match (format, kind, bits, strategy) {
        ("float-quantized", "float", 8, "channel") if symmetric => WeightScheme::Fp8Channel,
        ("float-quantized", "float", 8, "tensor") if symmetric => WeightScheme::Fp8Tensor,
        ("float-quantized", "float", 8, "block") if symmetric => match block.as_deref() {
            Some(&[r, c]) if r > 0 && c > 0 => WeightScheme::Fp8Block {
                block_rows: r as usize,
                block_cols: c as usize,
            },
            _ => return Err(bad(format!("{at}.block_structure must be [rows, cols]"))),
        },
        ("int-quantized", "int", 8, "channel") if symmetric => WeightScheme::Int8Channel,
        ("pack-quantized", "int", 4 | 8, "group") if group > 0 => WeightScheme::IntGroup {
            bits: bits as u32,
            group,
            symmetric,
        },
        ("nvfp4-pack-quantized", "float", 4, "tensor_group") if group == 16 => WeightScheme::Nvfp4,
        ("mxfp4-pack-quantized", "float", 4, "group") if group == 32 => WeightScheme::Mxfp4,
        _ => {
            return Err(unsupported(format!(
                "{at}: format `{format}` with weights.type {kind}, weights.num_bits {bits}, \
                 weights.strategy = \"{strategy}\", symmetric {symmetric}, group_size {group} \
                 is not supported (see docs/presets.md)"
            )))
        }
    };
    Ok(scheme)
}

/// Input activations: none for the weight-only formats; dynamic (FP8 or int8, per token or
/// per group) or static (one stored `input_scale` per Linear) for FP8 and W8A8. Returns
/// whether they are static.
///
/// * Dynamic: the CPU runtime runs W8A8 (INT8 channel weights) with symmetric per-token int8
///   activations, so those args must say exactly that. FP8_BLOCK's are only checked to be
///   dynamic: the runtime quantizes them per token and group of the block's columns, as the
///   preset defines them (or runs weight-only when the columns are not whole blocks; see
///   `weights`).
/// * Static: symmetric per-tensor, FP8 with FP8 weights (vLLM's `CompressedTensorsW8A8Fp8`
///   with a static input scale) or int8 with INT8 channel weights (`CompressedTensorsW8A8Int8`
///   static).
///
/// FP8 per-tensor weights need input activations: vLLM runs them as W8A8, and the runtime has
/// no FP8 weight-only path.
fn check_activations(at: &str, a: Option<&Value>, scheme: WeightScheme) -> Result<bool> {
    let Some(a) = a.filter(|a| !a.is_null()) else {
        if scheme == WeightScheme::Fp8Tensor {
            return Err(unsupported(format!(
                "{at}.input_activations is missing: FP8 per-tensor weights are only supported \
                 with FP8 activations"
            )));
        }
        return Ok(false);
    };
    let dynamic = a.get("dynamic").and_then(Value::as_bool).unwrap_or(false);
    if !dynamic {
        check_static_activations(at, a, scheme)?;
        return Ok(true);
    }
    let allowed = matches!(
        scheme,
        WeightScheme::Fp8Channel
            | WeightScheme::Fp8Tensor
            | WeightScheme::Fp8Block { .. }
            | WeightScheme::Int8Channel
    );
    if !allowed {
        return Err(unsupported(format!(
            "{at}.input_activations (dynamic {dynamic}) is not supported with {scheme:?} weights"
        )));
    }
    if scheme == WeightScheme::Int8Channel {
        check_act_args(at, a, "int", "token")?;
    }
    Ok(false)
}

/// Static input activations: symmetric, 8 bits, one scale per tensor, of the weights' kind.
fn check_static_activations(at: &str, a: &Value, scheme: WeightScheme) -> Result<()> {
    let kind = match scheme {
        WeightScheme::Fp8Channel | WeightScheme::Fp8Tensor => "float",
        WeightScheme::Int8Channel => "int",
        _ => {
            return Err(unsupported(format!(
                "{at}.input_activations: static input scales are not supported with {scheme:?} \
                 weights (only FP8 channel/tensor and INT8 channel)"
            )))
        }
    };
    check_act_args(at, a, kind, "tensor")
}

/// The activation args must be symmetric `kind` 8-bit with `strategy`.
fn check_act_args(at: &str, a: &Value, kind: &str, strategy: &str) -> Result<()> {
    let field = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
    let symmetric = field("symmetric").as_bool().unwrap_or(true);
    let ok = field("type") == kind
        && field("num_bits") == 8
        && field("strategy") == strategy
        && symmetric;
    if ok {
        return Ok(());
    }
    let dynamic = field("dynamic").as_bool().unwrap_or(false);
    Err(unsupported(format!(
        "{at}.input_activations must be symmetric {kind} 8-bit with strategy {strategy} here \
         (dynamic {dynamic}; got type {}, num_bits {}, strategy {}, symmetric {symmetric})",
        field("type"),
        field("num_bits"),
        field("strategy")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn int_group(bits: u32, symmetric: bool) -> Value {
        json!({"type": "int", "num_bits": bits, "strategy": "group", "group_size": 128,
               "symmetric": symmetric})
    }

    #[test]
    fn mixed_precision_picks_the_most_specific_target() {
        let q = json!({"quant_method": "compressed-tensors", "format": "mixed-precision",
            "ignore": ["lm_head"],
            "config_groups": {
                "a": {"targets": ["Linear"], "format": "pack-quantized", "weights": int_group(4, true)},
                "b": {"targets": ["re:.*down_proj"], "format": "pack-quantized",
                      "weights": int_group(8, false)},
                "c": {"targets": ["model.layers.0.mlp.down_proj"], "format": "mxfp4-pack-quantized",
                      "weights": {"type": "float", "num_bits": 4, "strategy": "group",
                                  "group_size": 32}}}});
        let v = json!({"quantization_config": q});
        let quant = super::super::parse_quantization(&v).unwrap();
        let s = |m: &str| quant.scheme_for(m).unwrap();
        assert_eq!(s("lm_head"), None);
        assert_eq!(s("model.layers.0.mlp.down_proj"), Some(WeightScheme::Mxfp4));
        let int = |bits, symmetric| WeightScheme::IntGroup {
            bits,
            group: 128,
            symmetric,
        };
        assert_eq!(s("model.layers.1.mlp.down_proj"), Some(int(8, false)));
        assert_eq!(s("model.layers.1.mlp.up_proj"), Some(int(4, true)));
    }

    /// W8A8 runs symmetric per-token int8 activations; a config asking for anything else
    /// (here asymmetric, which vLLM runs with zero points) is refused, not run differently.
    #[test]
    fn int8_activations_must_be_symmetric_per_token() {
        let config = |symmetric: bool| {
            let acts = json!({"type": "int", "num_bits": 8, "strategy": "token",
                              "dynamic": true, "symmetric": symmetric});
            let q = json!({"quant_method": "compressed-tensors", "format": "int-quantized",
                "config_groups": {"g": {"targets": ["Linear"], "input_activations": acts,
                    "weights": {"type": "int", "num_bits": 8, "strategy": "channel",
                                "symmetric": true}}}});
            super::super::parse_quantization(&json!({ "quantization_config": q }))
        };
        let quant = config(true).unwrap();
        let s = quant.scheme_for("model.layers.0.mlp.up_proj").unwrap();
        assert_eq!(s, Some(WeightScheme::Int8Channel));
        let e = config(false).unwrap_err().to_string();
        assert!(
            e.contains("config_groups.g") && e.contains("symmetric false"),
            "{e}"
        );
    }

    /// llm-compressor's `FP8` scheme (per-tensor weights, static per-tensor inputs) and its
    /// FP8 `kv_cache_scheme` are read; a per-head KV scheme and static inputs on a weight-only
    /// format are refused by key.
    #[test]
    fn static_fp8_and_kv_cache_scheme() {
        let fp8 = |strategy: &str| {
            json!({"type": "float", "num_bits": 8, "strategy": strategy, "symmetric": true,
                   "dynamic": false})
        };
        let kv = |strategy: &str| {
            let q = json!({"quant_method": "compressed-tensors", "format": "float-quantized",
                "ignore": ["lm_head"], "kv_cache_scheme": fp8(strategy),
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": fp8("tensor"),
                    "input_activations": fp8("tensor")}}});
            json!({ "quantization_config": q })
        };
        let v = kv("tensor");
        let quant = super::super::parse_quantization(&v).unwrap();
        let m = "model.layers.0.self_attn.q_proj";
        assert_eq!(quant.scheme_for(m).unwrap(), Some(WeightScheme::Fp8Tensor));
        assert!(quant.static_input_for(m).unwrap() && quant.has_static_inputs());
        assert!(!quant.static_input_for("lm_head").unwrap());
        assert!(super::super::parse_kv_cache_scheme(&v).unwrap());
        let e = super::super::parse_kv_cache_scheme(&kv("attn_head"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kv_cache_scheme.strategy") && e.contains("attn_head"),
            "{e}"
        );

        let q = json!({"quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"g": {"targets": ["Linear"], "weights": int_group(4, true),
                "input_activations": fp8("tensor")}}});
        let e = super::super::parse_quantization(&json!({ "quantization_config": q }))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config_groups.g.input_activations") && e.contains("static"),
            "{e}"
        );
    }

    #[test]
    fn unknown_weight_formats_are_refused_naming_the_group() {
        let q = json!({"quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"g": {"targets": ["Linear"],
                "weights": {"type": "int", "num_bits": 2, "strategy": "group", "group_size": 128}}}});
        let e = super::super::parse_quantization(&json!({ "quantization_config": q }))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config_groups.g") && e.contains("num_bits 2"),
            "{e}"
        );
    }

    /// The runtime reads patterns with the recipe's matcher: Python's look-around works (a
    /// recipe may ignore with one, and its output must load), and so does `Module`.
    #[test]
    fn patterns_match_as_the_recipe_matches() {
        let pat = "re:.*(?<!gate)_proj$";
        assert!(pattern_matches(pat, "model.layers.0.mlp.up_proj").unwrap());
        assert!(!pattern_matches(pat, "model.layers.0.mlp.gate_proj").unwrap());
        assert!(pattern_matches("Module", "lm_head").unwrap());
        assert!(!pattern_matches("re:mlp", "model.layers.0.mlp.up_proj").unwrap());
        let e = pattern_matches("re:(", "x").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "config.json: quantization_config pattern: invalid regular expression `re:(`"
            ),
            "{e}"
        );
    }
}
