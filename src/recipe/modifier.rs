//! llm-compressor's `QuantizationModifier` (and the `QuantizationMixin` arguments that
//! `GPTQModifier` shares): its arguments as a recipe gives them, validated as
//! llm-compressor 0.14 / compressed-tensors 0.19 validate them, resolved into config
//! groups, and dumped back (`model_dump()` minus `None`s) for `recipe.yaml`.
//!
//! A group is accepted when its args are those of a preset qforge implements; a modifier
//! that needs calibration data (GPTQ, static activations, a KV-cache scheme) may also use
//! the args the calibration pipeline quantizes (see [`calibratable`]).

use super::args::{Dynamic, QuantArgs, QuantType, Role, Strategy};
use super::gptq::{resolve_actorder, ActorderArg};
use super::groups::{parse_groups, require_explicit_enums, GroupArg};
use super::matcher::match_pattern;
use super::plan::ConfigGroup;
use super::scheme::{find_preset, infer_format, Preset, PRESETS};
use crate::format::pyyaml::Yaml;
use crate::{Error, Result};
use serde_json::{Map, Value};

/// `scheme:` as written in the recipe: a preset name, or `{PRESET: [targets]}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SchemeArg {
    Name(String),
    Map(Vec<(String, Vec<String>)>),
}

/// The arguments of a `QuantizationModifier`, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantModifier {
    /// The class name, for errors.
    name: &'static str,
    config_groups: Option<Vec<GroupArg>>,
    pub targets: Vec<String>,
    pub ignore: Vec<String>,
    scheme: Option<SchemeArg>,
    pub kv_cache_scheme: Option<QuantArgs>,
    pub bypass_divisibility_checks: bool,
    pub requires_calibration_data: bool,
    /// `GPTQModifier.actorder`, applied to every group's weights; `None` elsewhere.
    pub gptq_actorder: Option<ActorderArg>,
    /// Follows an AWQModifier: the recipe runs on the calibration pipeline, which rounds
    /// its groups to nearest, so they need not be presets.
    pub after_awq: bool,
}

const NAME: &str = "QuantizationModifier";

/// The `QuantizationMixin` keys (what llm-compressor's AWQ shim moves to the
/// `QuantizationModifier` it adds).
pub(crate) const MIXIN_KEYS: &[&str] = &[
    "config_groups",
    "targets",
    "ignore",
    "scheme",
    "kv_cache_scheme",
    "weight_observer",
    "input_observer",
    "output_observer",
    "observer",
    "bypass_divisibility_checks",
];

/// Fields of the modifier that qforge accepts only at their default (`null`).
const UNSUPPORTED_FIELDS: &[&str] = &[
    "weight_observer",
    "input_observer",
    "output_observer",
    "observer",
    "index",
    "start",
    "end",
    "update",
];

impl QuantModifier {
    /// Parses and validates the modifier's argument mapping (`null` counts as empty);
    /// `after_awq`: an AWQModifier comes before it in the recipe.
    pub fn parse(args: &Value, after_awq: bool) -> Result<QuantModifier> {
        let mut m =
            QuantModifier::parse_fields(NAME, args, |_: &str, _: &Value, _: &str| Ok(false))?;
        m.after_awq = after_awq;
        m.finish()?;
        Ok(m)
    }

    /// Reads the mixin's fields of modifier `name`; `extra(key, value, path)` takes the
    /// other keys of that modifier (true when it knows the key). Call [`Self::finish`]
    /// after setting the modifier's own fields.
    pub fn parse_fields(
        name: &'static str,
        args: &Value,
        mut extra: impl FnMut(&str, &Value, &str) -> Result<bool>,
    ) -> Result<QuantModifier> {
        let empty = Map::new();
        let map = match args {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => {
                return Err(Error::Recipe(format!(
                    "{name}: expected a mapping of arguments"
                )))
            }
        };
        let mut m = QuantModifier {
            name,
            config_groups: None,
            targets: vec!["Linear".into()],
            ignore: Vec::new(),
            scheme: None,
            kv_cache_scheme: None,
            bypass_divisibility_checks: false,
            requires_calibration_data: false,
            gptq_actorder: None,
            after_awq: false,
        };
        for (key, val) in map {
            let at = format!("{name}.{key}");
            match key.as_str() {
                "config_groups" => m.config_groups = parse_groups(val, &at)?,
                "targets" => m.targets = parse_targets(val, &at)?,
                "ignore" => m.ignore = string_list(val, &at)?,
                "scheme" => m.scheme = parse_scheme(val, &at)?,
                "kv_cache_scheme" => m.kv_cache_scheme = parse_kv_cache(val, &at)?,
                "bypass_divisibility_checks" => m.bypass_divisibility_checks = boolean(val, &at)?,
                k if extra(k, val, &at)? => {}
                "requires_calibration_data" => m.requires_calibration_data = boolean(val, &at)?,
                "group" => {
                    return Err(Error::Recipe(format!(
                        "{at}: cannot be set, the group comes from the `<name>_modifiers` key"
                    )))
                }
                k if UNSUPPORTED_FIELDS.contains(&k) => {
                    if !val.is_null() {
                        return Err(Error::Unsupported(format!("{at} is not supported yet")));
                    }
                }
                _ => return Err(Error::Recipe(format!("{name}: unknown argument `{key}`"))),
            }
        }
        Ok(m)
    }

    /// After parsing: llm-compressor's `_set_requires_calibration_data` (static input or
    /// output activations, or a KV-cache scheme, need data), the GPTQ activation ordering
    /// written into explicit groups, and validation.
    pub fn finish(&mut self) -> Result<()> {
        let name = self.name;
        match (&self.scheme, &self.config_groups) {
            (Some(_), Some(_)) => {
                return Err(Error::Recipe(format!(
                    "{name}: set either `scheme` or `config_groups`, not both"
                )))
            }
            (None, None) => {
                return Err(Error::Recipe(format!(
                    "{name}: set `scheme` or `config_groups`"
                )))
            }
            _ => {}
        }
        if self.kv_cache_scheme.is_some() || self.raw_groups()?.iter().any(static_activations) {
            self.requires_calibration_data = true;
        }
        if let (Some(actorder), Some(groups)) = (&self.gptq_actorder, &mut self.config_groups) {
            for g in groups.iter_mut() {
                apply_actorder(actorder, g.weights.as_mut())?;
            }
        }
        self.validate()
    }

    fn validate(&self) -> Result<()> {
        let patterns = self.targets.iter().chain(&self.ignore);
        let group_targets = self.groups()?.into_iter().flat_map(|g| g.targets);
        for pattern in patterns.cloned().chain(group_targets) {
            match_pattern(&pattern, "")?;
        }
        Ok(())
    }

    /// The config groups this modifier quantizes with, as llm-compressor's
    /// `resolve_quantization_config` builds them (`group_0`, `group_1`, ...).
    pub fn groups(&self) -> Result<Vec<ConfigGroup>> {
        let mut groups = self.raw_groups()?;
        for g in &mut groups {
            if let Some(actorder) = &self.gptq_actorder {
                apply_actorder(actorder, g.weights.as_mut())?;
            }
            self.check_supported(g)?;
        }
        Ok(groups)
    }

    /// A group qforge cannot quantize without data is refused unless this modifier
    /// calibrates, and then only when the pipeline handles its args.
    fn check_supported(&self, g: &ConfigGroup) -> Result<()> {
        if g.preset.is_some() {
            return Ok(());
        }
        let calibrated = (self.requires_calibration_data || self.after_awq)
            && calibratable(
                g.weights.as_ref(),
                g.input_activations.as_ref(),
                g.output_activations.as_ref(),
            );
        if calibrated {
            return Ok(());
        }
        let at = format!("{}.config_groups.{}", self.name, g.name);
        Err(match (&self.config_groups, g.preset_name) {
            (None, Some(preset)) => Error::Unsupported(format!(
                "scheme {preset} is not supported yet (supported: {})",
                supported_names()
            )),
            (Some(_), Some(preset)) => Error::Unsupported(format!(
                "{at}: these are the arguments of scheme {preset}, which is not supported yet \
                 (supported: {})",
                supported_names()
            )),
            (_, None) => Error::Unsupported(format!(
                "{at}: these quantization arguments are not supported yet (qforge supports \
                 the arguments of {})",
                supported_names()
            )),
        })
    }

    /// The groups as resolved, before the support check.
    fn raw_groups(&self) -> Result<Vec<ConfigGroup>> {
        if let Some(groups) = &self.config_groups {
            return groups.iter().map(GroupArg::resolve).collect();
        }
        let pairs = match &self.scheme {
            Some(SchemeArg::Name(name)) => vec![(name.clone(), self.targets.clone())],
            Some(SchemeArg::Map(pairs)) => pairs.clone(),
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for (idx, (name, targets)) in pairs.into_iter().enumerate() {
            let preset = known_preset(&name)?;
            let args = preset.args()?;
            let weights = args.weights;
            let input_activations = args.input_activations;
            let format = infer_format(weights.as_ref(), input_activations.as_ref());
            out.push(ConfigGroup {
                name: format!("group_{idx}"),
                targets,
                weights,
                input_activations,
                output_activations: None,
                format: Some(format.to_string()),
                preset: preset.scheme,
                preset_name: Some(preset.name),
            });
        }
        Ok(out)
    }

    /// The modifier's `model_dump()` without `None`s, in field order (QuantizationMixin's
    /// fields, then Modifier's), as llm-compressor writes it to `recipe.yaml`.
    pub fn to_yaml(&self) -> Yaml {
        let mut args = Vec::new();
        if let Some(groups) = &self.config_groups {
            let dumped = groups
                .iter()
                .map(|g| (g.name.clone(), g.to_yaml()))
                .collect();
            args.push(("config_groups".to_string(), Yaml::Map(dumped)));
        }
        args.push(("targets".into(), Yaml::strs(&self.targets)));
        args.push(("ignore".into(), Yaml::strs(&self.ignore)));
        match &self.scheme {
            Some(SchemeArg::Name(name)) => args.push(("scheme".into(), Yaml::str(name.as_str()))),
            Some(SchemeArg::Map(pairs)) => {
                let map = pairs
                    .iter()
                    .map(|(k, t)| (k.clone(), Yaml::strs(t)))
                    .collect();
                args.push(("scheme".into(), Yaml::Map(map)));
            }
            None => {}
        }
        if let Some(kv) = &self.kv_cache_scheme {
            args.push(("kv_cache_scheme".into(), kv.to_yaml()));
        }
        args.push((
            "bypass_divisibility_checks".into(),
            Yaml::Bool(self.bypass_divisibility_checks),
        ));
        args.push((
            "requires_calibration_data".into(),
            Yaml::Bool(self.requires_calibration_data),
        ));
        Yaml::Map(args)
    }
}

/// What the calibration pipeline quantizes beyond the presets: int4/int8 weights per
/// tensor, channel or group (symmetric or not), FP8 weights per tensor or channel; input
/// activations of the weights' kind with 8-bit weights, dynamic per token or static per
/// tensor; no output activations.
pub(crate) fn calibratable(
    weights: Option<&QuantArgs>,
    inputs: Option<&QuantArgs>,
    outputs: Option<&QuantArgs>,
) -> bool {
    let Some(w) = weights else {
        return false;
    };
    let weights_ok = match w.kind {
        QuantType::Int => {
            matches!(w.num_bits, 4 | 8)
                && matches!(
                    w.strategy,
                    Strategy::Tensor | Strategy::Channel | Strategy::Group
                )
        }
        QuantType::Float => {
            w.num_bits == 8 && matches!(w.strategy, Strategy::Tensor | Strategy::Channel)
        }
    };
    // Activations go with 8-bit weights of the same kind (W8A8 int8, FP8).
    let inputs_ok = inputs.is_none_or(|i| {
        i.num_bits == 8
            && w.num_bits == 8
            && i.kind == w.kind
            && i.symmetric
            && matches!(
                (i.dynamic, i.strategy),
                (Dynamic::Dynamic, Strategy::Token) | (Dynamic::Static, Strategy::Tensor)
            )
    });
    w.dynamic == Dynamic::Static && weights_ok && inputs_ok && outputs.is_none()
}

/// True when a group's activations are observed on calibration data.
fn static_activations(g: &ConfigGroup) -> bool {
    let inputs = g
        .input_activations
        .as_ref()
        .is_some_and(|i| i.dynamic != Dynamic::Dynamic);
    let outputs = g
        .output_activations
        .as_ref()
        .is_some_and(|o| o.dynamic == Dynamic::Static);
    inputs || outputs
}

/// GPTQ's activation ordering on a group's weights, for the strategies it applies to.
fn apply_actorder(actorder: &ActorderArg, weights: Option<&mut QuantArgs>) -> Result<()> {
    let Some(w) = weights else {
        return Ok(());
    };
    let applies = matches!(
        w.strategy,
        Strategy::Group
            | Strategy::TensorGroup
            | Strategy::Channel
            | Strategy::Tensor
            | Strategy::Block
    );
    if applies {
        w.actorder = resolve_actorder(actorder, w.actorder.as_deref())?;
    }
    Ok(())
}

fn supported_names() -> String {
    let names: Vec<&str> = PRESETS
        .iter()
        .filter(|p| p.scheme.is_some())
        .map(|p| p.name)
        .collect();
    names.join(", ")
}

/// A preset name of compressed-tensors, else the matching error.
fn known_preset(name: &str) -> Result<&'static Preset> {
    find_preset(name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        Error::Recipe(format!(
            "unknown scheme {name} (presets: {})",
            names.join(", ")
        ))
    })
}

pub(crate) fn boolean(v: &Value, at: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| Error::Recipe(format!("{at}: expected true or false")))
}

pub(crate) fn string_list(v: &Value, at: &str) -> Result<Vec<String>> {
    let bad = || Error::Recipe(format!("{at}: expected a list of strings"));
    let items = v.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|i| i.as_str().map(String::from).ok_or_else(bad))
        .collect()
}

/// `targets`: a string becomes a one-element list.
pub(crate) fn parse_targets(v: &Value, at: &str) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        v => string_list(v, at),
    }
}

fn parse_scheme(v: &Value, at: &str) -> Result<Option<SchemeArg>> {
    match v {
        Value::Null => Ok(None),
        Value::String(name) => {
            known_preset(name)?;
            Ok(Some(SchemeArg::Name(name.clone())))
        }
        Value::Object(map) => {
            let mut pairs = Vec::new();
            for (name, targets) in map {
                known_preset(name)?;
                pairs.push((
                    name.clone(),
                    parse_targets(targets, &format!("{at}.{name}"))?,
                ));
            }
            Ok(Some(SchemeArg::Map(pairs)))
        }
        _ => Err(Error::Recipe(format!(
            "{at}: expected a preset name or a mapping of preset names to targets"
        ))),
    }
}

/// `kv_cache_scheme`: `QuantizationArgs`, without an observer (llm-compressor applies no
/// observer override to it, so `observer: null` is what it writes).
fn parse_kv_cache(v: &Value, at: &str) -> Result<Option<QuantArgs>> {
    if v.is_null() {
        return Ok(None);
    }
    require_explicit_enums(v, at)?;
    let kv = QuantArgs::from_value(v, Role::KvCache, at)?;
    // What vLLM reads as `k_scale` / `v_scale`: one static scale per tensor.
    let supported = kv.num_bits == 8
        && kv.symmetric
        && kv.dynamic == Dynamic::Static
        && kv.strategy == Strategy::Tensor;
    if !supported {
        return Err(Error::Unsupported(format!(
            "{at}: only static, symmetric, per-tensor 8-bit KV-cache scales are supported yet"
        )));
    }
    Ok(Some(kv))
}
