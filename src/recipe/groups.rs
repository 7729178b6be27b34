//! `config_groups:` entries (compressed-tensors `QuantizationScheme`): parsing and
//! validation as compressed-tensors 0.19 does it, the preset their args are, and their
//! `model_dump()` for `recipe.yaml`.

use super::args::{QuantArgs, Role, Strategy};
use super::modifier::string_list;
use super::plan::ConfigGroup;
use super::scheme::{infer_format, Preset, PRESETS};
use crate::format::pyyaml::Yaml;
use crate::{Error, Result};
use serde_json::Value;

/// A `config_groups:` entry (compressed-tensors `QuantizationScheme`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupArg {
    pub name: String,
    /// Where the group is in the recipe, for errors.
    at: String,
    targets: Vec<String>,
    pub weights: Option<QuantArgs>,
    input_activations: Option<QuantArgs>,
    output_activations: Option<QuantArgs>,
    format: Option<String>,
}

impl GroupArg {
    /// Matches the group's args against the presets (the one they equal, if any).
    pub fn resolve(&self) -> Result<ConfigGroup> {
        let at = &self.at;
        let inferred = infer_format(self.weights.as_ref(), self.input_activations.as_ref());
        let same = |p: &&Preset| {
            p.args().is_ok_and(|a| {
                comparable(&a.weights) == comparable(&self.weights)
                    && comparable(&a.input_activations) == comparable(&self.input_activations)
                    && self.output_activations.is_none()
            })
        };
        let preset = PRESETS.iter().find(same);
        if self.format.as_deref().is_some_and(|f| f != inferred) {
            return Err(Error::Unsupported(format!(
                "{at}.format: {} is not supported yet for these arguments (expected {inferred})",
                self.format.as_deref().unwrap_or_default()
            )));
        }
        Ok(ConfigGroup {
            name: self.name.clone(),
            targets: self.targets.clone(),
            weights: self.weights.clone(),
            input_activations: self.input_activations.clone(),
            output_activations: self.output_activations.clone(),
            format: Some(inferred.to_string()),
            preset: preset.and_then(|p| p.scheme),
            preset_name: preset.map(|p| p.name),
        })
    }

    pub fn to_yaml(&self) -> Yaml {
        let args = |a: &Option<QuantArgs>| a.as_ref().map_or(Yaml::Null, QuantArgs::to_yaml);
        let entries = vec![
            ("targets".to_string(), Yaml::strs(&self.targets)),
            ("weights".to_string(), args(&self.weights)),
            (
                "input_activations".to_string(),
                args(&self.input_activations),
            ),
            (
                "output_activations".to_string(),
                args(&self.output_activations),
            ),
            (
                "format".to_string(),
                self.format.as_deref().map_or(Yaml::Null, Yaml::str),
            ),
        ];
        Yaml::Map(entries)
    }
}

/// Args as far as they decide the preset: the zero-point dtype of symmetric args is
/// neither used nor serialised, so an explicit group may leave it at its default where a
/// preset sets it (MXFP4's `torch.uint8`); GPTQ's activation ordering changes how the
/// codes are chosen, not their format.
fn comparable(a: &Option<QuantArgs>) -> Option<QuantArgs> {
    a.clone().map(|mut a| {
        if a.symmetric {
            a.zp_dtype = None;
        }
        a.actorder = None;
        a
    })
}

pub(crate) fn parse_groups(v: &Value, at: &str) -> Result<Option<Vec<GroupArg>>> {
    let map = match v {
        Value::Null => return Ok(None),
        Value::Object(m) if m.is_empty() => {
            return Err(Error::Recipe(format!("{at}: expected at least one group")))
        }
        Value::Object(m) => m,
        _ => return Err(Error::Recipe(format!("{at}: expected a mapping of groups"))),
    };
    let groups = map
        .iter()
        .map(|(name, g)| parse_group(name, g, &format!("{at}.{name}")))
        .collect::<Result<_>>()?;
    Ok(Some(groups))
}

/// One `QuantizationScheme`: `targets` (required), the three arg sets and `format`.
fn parse_group(name: &str, v: &Value, at: &str) -> Result<GroupArg> {
    let map = v
        .as_object()
        .ok_or_else(|| Error::Recipe(format!("{at}: expected a mapping")))?;
    let mut g = GroupArg {
        name: name.to_string(),
        at: at.to_string(),
        targets: Vec::new(),
        weights: None,
        input_activations: None,
        output_activations: None,
        format: None,
    };
    let args = |val: &Value, role, key: &str| -> Result<Option<QuantArgs>> {
        let at = format!("{at}.{key}");
        match val {
            Value::Null => Ok(None),
            v => {
                require_explicit_enums(v, &at)?;
                QuantArgs::from_value(v, role, &at).map(Some)
            }
        }
    };
    let mut has_targets = false;
    for (key, val) in map {
        match key.as_str() {
            "targets" => {
                g.targets = string_list(val, &format!("{at}.targets"))?;
                has_targets = true;
            }
            "weights" => g.weights = args(val, Role::Weights, key)?,
            "input_activations" => g.input_activations = args(val, Role::InputActivations, key)?,
            "output_activations" => g.output_activations = args(val, Role::OutputActivations, key)?,
            "format" => g.format = parse_format(val, &format!("{at}.format"))?,
            _ => return Err(Error::Recipe(format!("{at}: unknown key `{key}`"))),
        }
    }
    if !has_targets {
        return Err(Error::Recipe(format!("{at}: `targets` is required")));
    }
    check_activations(&g, at)?;
    Ok(g)
}

/// llm-compressor dumps an inferred `strategy` or a defaulted `type` as Python enum
/// objects (`!!python/object/apply:...` tags) into `recipe.yaml`, which no YAML loader
/// reads back; qforge asks for both to be explicit instead of writing that.
pub(crate) fn require_explicit_enums(v: &Value, at: &str) -> Result<()> {
    for key in ["type", "strategy"] {
        if v.get(key).is_none_or(Value::is_null) {
            return Err(Error::Unsupported(format!(
                "{at}: `{key}` must be given explicitly (an implicit {key} is not supported yet)"
            )));
        }
    }
    Ok(())
}

/// `QuantizationScheme.validate_model_after`: activation strategies and actorder.
fn check_activations(g: &GroupArg, at: &str) -> Result<()> {
    if let Some(i) = &g.input_activations {
        let ok = matches!(
            i.strategy,
            Strategy::Token
                | Strategy::Tensor
                | Strategy::Group
                | Strategy::TensorGroup
                | Strategy::AttnHead
        );
        if !ok {
            return Err(Error::Recipe(format!(
                "{at}.input_activations: strategy {} is not possible for activations",
                i.strategy.as_str()
            )));
        }
    }
    let acts = [
        ("input_activations", &g.input_activations),
        ("output_activations", &g.output_activations),
    ];
    for (key, a) in acts {
        if a.as_ref().is_some_and(|a| a.actorder.is_some()) {
            return Err(Error::Recipe(format!(
                "{at}.{key}: actorder applies to weights only"
            )));
        }
    }
    Ok(())
}

/// compressed-tensors' `CompressionFormat` values (a group cannot be `mixed-precision`).
const FORMATS: &[&str] = &[
    "dense",
    "sparse-bitmask",
    "sparse-24-bitmask",
    "int-quantized",
    "float-quantized",
    "naive-quantized",
    "pack-quantized",
    "marlin-24",
    "nvfp4-pack-quantized",
    "mxfp4-pack-quantized",
    "mxfp8-quantized",
];

fn parse_format(v: &Value, at: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if FORMATS.contains(&s.as_str()) => Ok(Some(s.clone())),
        _ => Err(Error::Recipe(format!(
            "{at}: expected one of {} or null",
            FORMATS.join(", ")
        ))),
    }
}
