//! The activation-aware transforms of llm-compressor 0.14: `SmoothQuantModifier` and
//! `AWQModifier` (its transform form, which a quantization modifier follows), parsed with
//! their defaults and validation and dumped as llm-compressor writes them after a run
//! (default mappings filled in, `ignore: []`).

use super::mappings::{llama_mappings, Mapping, MappingKind};
use super::modifier::{boolean, string_list};
use crate::format::pyyaml::Yaml;
use crate::{Error, Result};
use serde_json::{Map, Value};

/// `SmoothQuantModifier`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SmoothQuantModifier {
    pub smoothing_strength: f64,
    /// `None`: the architecture's default mappings (written as tuples, as the registry
    /// holds them); given ones are written back as lists.
    pub mappings: Option<Vec<Mapping>>,
    pub ignore: Vec<String>,
    pub num_calibration_steps: Option<u64>,
}

/// `AWQModifier.duo_scaling`: also scale by the weights' means (`true`), not (`false`),
/// or search both (`"both"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuoScaling {
    True,
    False,
    Both,
}

/// `AWQModifier`'s arguments (the transform form: no quantization arguments).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AwqModifier {
    pub mappings: Option<Vec<Mapping>>,
    pub duo_scaling: DuoScaling,
    pub n_grid: u64,
}

const SQ: &str = "SmoothQuantModifier";
const AWQ: &str = "AWQModifier";

fn arg_map<'a>(
    args: &'a Value,
    name: &str,
    empty: &'a Map<String, Value>,
) -> Result<&'a Map<String, Value>> {
    match args {
        Value::Null => Ok(empty),
        Value::Object(m) => Ok(m),
        _ => Err(Error::Recipe(format!(
            "{name}: expected a mapping of arguments"
        ))),
    }
}

/// The `Modifier` base fields every modifier accepts: `requires_calibration_data` (these
/// transforms need data: `false` is refused), `index`/`start`/`end`/`update` (one-shot:
/// only null), `group` (comes from the `<name>_modifiers` key). True when `key` was one.
fn base_field(name: &str, key: &str, val: &Value, at: &str) -> Result<bool> {
    match key {
        "requires_calibration_data" => {
            if !boolean(val, at)? {
                return Err(Error::Recipe(format!(
                    "{at}: {name} always needs calibration data"
                )));
            }
        }
        "index" | "start" | "end" | "update" => {
            if !val.is_null() {
                return Err(Error::Unsupported(format!("{at} is not supported yet")));
            }
        }
        "group" => {
            return Err(Error::Recipe(format!(
                "{at}: cannot be set, the group comes from the `<name>_modifiers` key"
            )))
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl SmoothQuantModifier {
    pub fn parse(args: &Value) -> Result<SmoothQuantModifier> {
        let empty = Map::new();
        let mut m = SmoothQuantModifier {
            smoothing_strength: 0.5,
            mappings: None,
            ignore: Vec::new(),
            num_calibration_steps: None,
        };
        for (key, val) in arg_map(args, SQ, &empty)? {
            let at = format!("{SQ}.{key}");
            match key.as_str() {
                "smoothing_strength" => m.smoothing_strength = strength(val, &at)?,
                "mappings" => m.mappings = sq_mappings(val, &at)?,
                "ignore" if val.is_null() => m.ignore = Vec::new(),
                "ignore" => m.ignore = string_list(val, &at)?,
                "num_calibration_steps" => {
                    m.num_calibration_steps = match val {
                        Value::Null => None,
                        v => Some(v.as_u64().ok_or_else(|| {
                            Error::Recipe(format!("{at}: expected a non-negative integer or null"))
                        })?),
                    }
                }
                "calibration_function" if val.is_null() => {}
                "algorithm" => match val.as_str() {
                    Some("smoothquant") => {}
                    Some("log_equalization") => {
                        return Err(Error::Unsupported(format!(
                            "{at}: log_equalization is not supported yet"
                        )))
                    }
                    _ => return Err(Error::Recipe(format!("{at}: expected smoothquant"))),
                },
                k if base_field(SQ, k, val, &at)? => {}
                _ => return Err(Error::Recipe(format!("{SQ}: unknown argument `{key}`"))),
            }
        }
        Ok(m)
    }

    pub fn mappings(&self) -> Vec<Mapping> {
        self.mappings
            .clone()
            .unwrap_or_else(|| llama_mappings(MappingKind::SmoothQuant))
    }

    /// `model_dump()` minus `None`s, after `on_initialize` filled mappings and ignore.
    pub fn to_yaml(&self) -> Yaml {
        let pair = |m: &Mapping| {
            vec![
                Yaml::strs(&m.balance_layers),
                Yaml::str(m.smooth_layer.as_str()),
            ]
        };
        let mappings = match &self.mappings {
            Some(given) => given.iter().map(|m| Yaml::Seq(pair(m))).collect(),
            None => self
                .mappings()
                .iter()
                .map(|m| Yaml::Tuple(pair(m)))
                .collect(),
        };
        let mut args = vec![
            ("requires_calibration_data".to_string(), Yaml::Bool(true)),
            (
                "smoothing_strength".into(),
                Yaml::float(self.smoothing_strength),
            ),
            ("mappings".into(), Yaml::Seq(mappings)),
            ("ignore".into(), Yaml::strs(&self.ignore)),
        ];
        if let Some(n) = self.num_calibration_steps {
            args.push(("num_calibration_steps".into(), Yaml::int(n)));
        }
        args.push(("algorithm".into(), Yaml::str("smoothquant")));
        Yaml::Map(args)
    }
}

impl AwqModifier {
    /// Parses the transform form's arguments (the quantization keys of the old form are
    /// split off by the caller).
    pub fn parse(map: &Map<String, Value>) -> Result<AwqModifier> {
        let mut m = AwqModifier {
            mappings: None,
            duo_scaling: DuoScaling::True,
            n_grid: 20,
        };
        for (key, val) in map {
            let at = format!("{AWQ}.{key}");
            match key.as_str() {
                "mappings" => m.mappings = awq_mappings(val, &at)?,
                "duo_scaling" => m.duo_scaling = duo_scaling(val, &at)?,
                "n_grid" => m.n_grid = n_grid(val, &at)?,
                "offload_device" => {
                    if !val.is_null() {
                        return Err(Error::Unsupported(format!(
                            "{at} is not supported yet (qforge keeps activations on the CPU)"
                        )));
                    }
                }
                k if base_field(AWQ, k, val, &at)? => {}
                _ => return Err(Error::Recipe(format!("{AWQ}: unknown argument `{key}`"))),
            }
        }
        if m.duo_scaling == DuoScaling::Both && m.n_grid < 4 {
            return Err(Error::Recipe(format!(
                "{AWQ}.n_grid: duo_scaling: both needs n_grid of at least 4 (two grids of n_grid/2 points)"
            )));
        }
        Ok(m)
    }

    pub fn mappings(&self) -> Vec<Mapping> {
        self.mappings
            .clone()
            .unwrap_or_else(|| llama_mappings(MappingKind::Awq))
    }

    pub fn to_yaml(&self) -> Yaml {
        let mappings = self
            .mappings()
            .iter()
            .map(|m| {
                Yaml::Map(vec![
                    ("smooth_layer".into(), Yaml::str(m.smooth_layer.as_str())),
                    ("balance_layers".into(), Yaml::strs(&m.balance_layers)),
                    (
                        "activation_hook_target".into(),
                        m.activation_hook_target
                            .as_deref()
                            .map_or(Yaml::Null, Yaml::str),
                    ),
                ])
            })
            .collect();
        let duo = match self.duo_scaling {
            DuoScaling::True => Yaml::Bool(true),
            DuoScaling::False => Yaml::Bool(false),
            DuoScaling::Both => Yaml::str("both"),
        };
        Yaml::Map(vec![
            ("requires_calibration_data".into(), Yaml::Bool(true)),
            ("mappings".into(), Yaml::Seq(mappings)),
            ("duo_scaling".into(), duo),
            ("n_grid".into(), Yaml::int(self.n_grid)),
        ])
    }
}

/// `smoothing_strength`, alpha: llm-compressor documents the range 0–1 (and does not check
/// it); qforge refuses values outside it, which would not smooth but distort.
fn strength(v: &Value, at: &str) -> Result<f64> {
    match v.as_f64() {
        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Some(x) => Err(Error::Recipe(format!(
            "{at}: {x} is outside [0, 1] (0 moves nothing onto the weights, 1 moves everything)"
        ))),
        None => Err(Error::Recipe(format!("{at}: expected a number in [0, 1]"))),
    }
}

fn n_grid(v: &Value, at: &str) -> Result<u64> {
    // `duo_scaling: true` divides by n_grid - 2, `false` by n_grid - 1.
    v.as_u64()
        .filter(|&n| n >= 3)
        .ok_or_else(|| Error::Recipe(format!("{at}: expected an integer of at least 3")))
}

fn duo_scaling(v: &Value, at: &str) -> Result<DuoScaling> {
    match v {
        Value::Bool(true) => Ok(DuoScaling::True),
        Value::Bool(false) => Ok(DuoScaling::False),
        Value::String(s) if s == "both" => Ok(DuoScaling::Both),
        _ => Err(Error::Recipe(format!(
            "{at}: duo_scaling must be True, False, or 'both', got {v}"
        ))),
    }
}

/// SmoothQuant's `[[balance layers...], smooth layer]` pairs (lists or tuples).
fn sq_mappings(v: &Value, at: &str) -> Result<Option<Vec<Mapping>>> {
    let bad = || {
        Error::Recipe(format!(
            "{at}: expected a list of [[balance layers...], smooth layer] pairs"
        ))
    };
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(bad()),
    };
    let pair = |item: &Value| -> Result<Mapping> {
        match item.as_array().map(Vec::as_slice) {
            Some([balance, Value::String(smooth)]) => Ok(Mapping {
                smooth_layer: smooth.clone(),
                balance_layers: string_list(balance, at).map_err(|_| bad())?,
                activation_hook_target: None,
            }),
            _ => Err(bad()),
        }
    };
    items.iter().map(pair).collect::<Result<_>>().map(Some)
}

/// AWQ's `{smooth_layer, balance_layers, activation_hook_target}` mappings.
fn awq_mappings(v: &Value, at: &str) -> Result<Option<Vec<Mapping>>> {
    let items = match v {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(Error::Recipe(format!("{at}: expected a list of mappings"))),
    };
    let one = |(i, item): (usize, &Value)| -> Result<Mapping> {
        let at = format!("{at}[{i}]");
        let map = item
            .as_object()
            .ok_or_else(|| Error::Recipe(format!("{at}: expected a mapping")))?;
        let mut smooth = None;
        let mut balance = None;
        let mut hook = None;
        for (key, val) in map {
            match key.as_str() {
                "smooth_layer" => smooth = val.as_str().map(String::from),
                "balance_layers" => balance = Some(string_list(val, &format!("{at}.{key}"))?),
                "activation_hook_target" => {
                    hook = match val {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        _ => {
                            return Err(Error::Recipe(format!(
                                "{at}.{key}: expected a string or null"
                            )))
                        }
                    }
                }
                _ => return Err(Error::Recipe(format!("{at}: unknown key `{key}`"))),
            }
        }
        match (smooth, balance) {
            (Some(smooth_layer), Some(balance_layers)) => Ok(Mapping {
                smooth_layer,
                balance_layers,
                activation_hook_target: hook,
            }),
            _ => Err(Error::Recipe(format!(
                "{at}: `smooth_layer` (a string) and `balance_layers` are required"
            ))),
        }
    };
    items
        .iter()
        .enumerate()
        .map(one)
        .collect::<Result<_>>()
        .map(Some)
}
