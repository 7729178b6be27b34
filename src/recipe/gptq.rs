//! llm-compressor 0.14's `GPTQModifier`: a `QuantizationModifier`'s arguments (the same
//! mixin) plus `block_size`, `dampening_frac`, `actorder` and `batched_quantization`.

use super::modifier::{boolean, QuantModifier};
use crate::format::pyyaml::Yaml;
use crate::{Error, Result};
use serde_json::Value;

const NAME: &str = "GPTQModifier";

/// `GPTQModifier.actorder` as written: left out (llm-compressor's `Sentinel("static")`,
/// which fills only groups without their own), `null` (no reordering) or a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ActorderArg {
    Default,
    Null,
    Set(String),
}

/// `batched_quantization`: `"auto"`, a positive batch size, or `null` (no batching).
/// It only decides how many same-shape modules are solved at once, never the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    Auto,
    Max(u64),
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GptqModifier {
    pub quant: QuantModifier,
    pub block_size: u64,
    pub dampening_frac: Option<f64>,
    pub actorder: ActorderArg,
    pub batched_quantization: Batching,
}

impl GptqModifier {
    pub fn parse(args: &Value) -> Result<GptqModifier> {
        let mut block_size = 128;
        let mut dampening_frac = Some(0.01);
        let mut actorder = ActorderArg::Default;
        let mut batched_quantization = Batching::Auto;
        let extra = |key: &str, val: &Value, at: &str| -> Result<bool> {
            match key {
                "block_size" => block_size = positive(val, at)?,
                "dampening_frac" => dampening_frac = fraction(val, at)?,
                "actorder" => actorder = parse_actorder(val, at)?,
                "batched_quantization" => batched_quantization = parse_batching(val, at)?,
                "requires_calibration_data" => {
                    if !boolean(val, at)? {
                        return Err(Error::Recipe(format!(
                            "{at}: GPTQModifier always needs calibration data"
                        )));
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        };
        let mut quant = QuantModifier::parse_fields(NAME, args, extra)?;
        quant.requires_calibration_data = true;
        quant.gptq_actorder = Some(actorder.clone());
        quant.finish()?;
        Ok(GptqModifier {
            quant,
            block_size,
            dampening_frac,
            actorder,
            batched_quantization,
        })
    }

    /// `model_dump()` minus `None`s: the mixin's fields, then GPTQ's.
    pub fn to_yaml(&self) -> Yaml {
        let Yaml::Map(mut args) = self.quant.to_yaml() else {
            unreachable!("a modifier dumps to a mapping")
        };
        args.push(("block_size".into(), Yaml::int(self.block_size)));
        if let Some(d) = self.dampening_frac {
            args.push(("dampening_frac".into(), Yaml::float(d)));
        }
        match &self.actorder {
            ActorderArg::Default => args.push(("actorder".into(), Yaml::str("static"))),
            ActorderArg::Set(a) => args.push(("actorder".into(), Yaml::str(a.as_str()))),
            ActorderArg::Null => {}
        }
        match self.batched_quantization {
            Batching::Auto => args.push(("batched_quantization".into(), Yaml::str("auto"))),
            Batching::Max(n) => args.push(("batched_quantization".into(), Yaml::int(n))),
            Batching::Off => {}
        }
        Yaml::Map(args)
    }
}

/// `resolve_actorder` of `GPTQModifier.resolve_quantization_config`: the ordering a
/// group's weights end up with, given the modifier's and the group's own.
pub(crate) fn resolve_actorder(
    modifier: &ActorderArg,
    existing: Option<&str>,
) -> Result<Option<String>> {
    // `static` is an alias of `weight` (compressed-tensors' Aliasable enum).
    let canon = |a: &str| if a == "static" { "weight" } else { a }.to_string();
    match (modifier, existing) {
        (ActorderArg::Default, None) => Ok(Some("static".into())),
        (ActorderArg::Default, Some(e)) => Ok(Some(e.to_string())),
        (ActorderArg::Null, None) => Ok(None),
        (ActorderArg::Set(a), None) => Ok(Some(a.clone())),
        (ActorderArg::Set(a), Some(e)) if canon(a) == canon(e) => Ok(Some(a.clone())),
        (a, Some(e)) => {
            let mine = match a {
                ActorderArg::Set(s) => s.as_str(),
                _ => "None",
            };
            Err(Error::Recipe(format!(
                "{NAME}: Cannot resolve activation ordering when both `GPTQModifier.actorder` \
                 and `QuantizationScheme.actorder` are provided and differ ({mine}, {e}). \
                 Either unset `GPTQModifier.actorder` or remove `actorder` from config groups."
            )))
        }
    }
}

/// `actorder`: `static`, `weight` or null; `group`/`dynamic`/`true` were removed in 0.14,
/// refused with compressed-tensors' message.
fn parse_actorder(v: &Value, at: &str) -> Result<ActorderArg> {
    match crate::recipe::args::actorder_value(v, at)? {
        None => Ok(ActorderArg::Null),
        Some(a) => Ok(ActorderArg::Set(a)),
    }
}

fn parse_batching(v: &Value, at: &str) -> Result<Batching> {
    match v {
        Value::Null => Ok(Batching::Off),
        Value::String(s) if s == "auto" => Ok(Batching::Auto),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i > 0 => Ok(Batching::Max(i as u64)),
            Some(_) => Err(Error::Recipe(format!(
                "{at}: batched_quantization must be a positive integer"
            ))),
            None => Err(Error::Recipe(format!(
                "{at}: expected auto, an integer or null"
            ))),
        },
        _ => Err(Error::Recipe(format!(
            "{at}: expected auto, an integer or null"
        ))),
    }
}

fn positive(v: &Value, at: &str) -> Result<u64> {
    v.as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Recipe(format!("{at}: expected a positive integer")))
}

/// `dampening_frac`: a non-negative number or null (no dampening).
fn fraction(v: &Value, at: &str) -> Result<Option<f64>> {
    match v {
        Value::Null => Ok(None),
        v => match v.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            _ => Err(Error::Recipe(format!(
                "{at}: expected a non-negative number or null"
            ))),
        },
    }
}
