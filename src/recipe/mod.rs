//! llm-compressor recipes: YAML → [`Recipe`] → [`QuantPlan`], and the `recipe.yaml`
//! llm-compressor writes next to the quantized model.
//!
//! Grammar (llm-compressor 0.14 `Recipe.from_dict`): the top level is a mapping; each key
//! ending in `_stage` whose value is a mapping is a stage; inside it each key ending in
//! `_modifiers` whose value is a mapping is a modifier group; inside that, modifier class
//! name → arguments. Every other key is ignored, as llm-compressor ignores it (`version:`,
//! `metadata:`, a bare top-level modifier list...). The recipe's stage name is the last
//! stage's key with every `_stage` removed (llm-compressor runs and writes every modifier
//! as one stage); each modifier keeps its group name and its place.
//!
//! Modifiers: `QuantizationModifier`, `GPTQModifier`, `SmoothQuantModifier`, `AWQModifier`
//! (its 0.14 transform form; the old form with quantization arguments on `AWQModifier` is
//! split into `AWQModifier` + `QuantizationModifier`, as llm-compressor's shim splits it).
//! A recipe has exactly one modifier that quantizes (`QuantizationModifier` or
//! `GPTQModifier`). The calibration contract is in [`calib`].

pub mod arch;
mod args;
pub mod calib;
mod gptq;
mod groups;
mod mappings;
pub mod matcher;
mod modifier;
mod plan;
mod scheme;
mod shipped;
mod transform;

pub use args::{Dynamic, QuantArgs, QuantType, Role, Strategy};
pub use calib::CalibStep;
pub use gptq::Batching;
pub use mappings::{default_mappings, resolve_mappings, Mapping, MappingKind, ResolvedMapping};
pub use plan::{ConfigGroup, QuantPlan, COMPRESSED_TENSORS_VERSION};
pub use scheme::{find_preset, infer_format, preset_of, Preset, PresetArgs, Scheme, PRESETS};
pub use shipped::{find_shipped, scheme_recipe, shipped_names, ShippedRecipe, SHIPPED};
pub use transform::DuoScaling;

use crate::format::pyyaml::{self, Yaml};
use crate::{Error, Result};
use gptq::GptqModifier;
use modifier::{QuantModifier, MIXIN_KEYS};
use serde_json::Value;
use std::path::Path;
use transform::{AwqModifier, SmoothQuantModifier};

/// A parsed llm-compressor recipe: its modifiers in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Stage name without `_stage` (llm-compressor's `Recipe.stage`).
    stage: String,
    modifiers: Vec<Entry>,
}

/// A modifier and its group name (without `_modifiers`).
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    group: String,
    modifier: Modifier,
}

#[derive(Debug, Clone, PartialEq)]
enum Modifier {
    Quantization(QuantModifier),
    Gptq(GptqModifier),
    SmoothQuant(SmoothQuantModifier),
    Awq(AwqModifier),
}

impl Modifier {
    fn class_name(&self) -> &'static str {
        match self {
            Modifier::Quantization(_) => "QuantizationModifier",
            Modifier::Gptq(_) => "GPTQModifier",
            Modifier::SmoothQuant(_) => "SmoothQuantModifier",
            Modifier::Awq(_) => "AWQModifier",
        }
    }

    fn requires_data(&self) -> bool {
        match self {
            Modifier::Quantization(q) => q.requires_calibration_data,
            Modifier::Gptq(_) | Modifier::SmoothQuant(_) | Modifier::Awq(_) => true,
        }
    }

    /// The quantization arguments, for the modifiers that quantize.
    fn quant(&self) -> Option<&QuantModifier> {
        match self {
            Modifier::Quantization(q) => Some(q),
            Modifier::Gptq(g) => Some(&g.quant),
            Modifier::SmoothQuant(_) | Modifier::Awq(_) => None,
        }
    }

    fn to_yaml(&self) -> Yaml {
        match self {
            Modifier::Quantization(q) => q.to_yaml(),
            Modifier::Gptq(g) => g.to_yaml(),
            Modifier::SmoothQuant(sq) => sq.to_yaml(),
            Modifier::Awq(awq) => awq.to_yaml(),
        }
    }
}

/// Modifiers of llm-compressor 0.14 that qforge does not implement.
const OTHER_MODIFIERS: &[&str] = &[
    "AutoRoundModifier",
    "ConstantPruningModifier",
    "LogarithmicEqualizationModifier",
    "MagnitudePruningModifier",
    "QuIPModifier",
    "REAPPruningModifier",
    "SparseGPTModifier",
    "SpinQuantModifier",
    "WandaPruningModifier",
];

impl Recipe {
    /// Parses and validates a recipe. Invalid YAML, unknown names and keys and bad
    /// values give `Error::Recipe`; valid llm-compressor features qforge lacks give
    /// `Error::Unsupported`.
    pub fn from_yaml(text: &str) -> Result<Recipe> {
        let doc = parse_yaml(text)?;
        let top = match &doc {
            Value::Object(map) => map,
            Value::Null => return Err(Error::Recipe("the recipe is empty".into())),
            _ => {
                return Err(Error::Recipe(
                    "expected a mapping of `<name>_stage` keys at the top level".into(),
                ))
            }
        };
        let mut stage = None;
        let mut found = Vec::new();
        for (stage_key, stage_val) in top {
            let Some(groups) = stage_val
                .as_object()
                .filter(|_| stage_key.ends_with("_stage"))
            else {
                continue;
            };
            stage = Some(stage_key.replace("_stage", ""));
            for (group_key, group_val) in groups {
                let Some(mods) = group_val
                    .as_object()
                    .filter(|_| group_key.ends_with("_modifiers"))
                else {
                    continue;
                };
                for (name, args) in mods {
                    found.push((group_key.replace("_modifiers", ""), name, args));
                }
            }
        }
        if found.is_empty() {
            return Err(no_modifier_error(top));
        }
        let mut modifiers = Vec::new();
        for (group, name, args) in found {
            let after_awq = modifiers
                .iter()
                .any(|e: &Entry| matches!(e.modifier, Modifier::Awq(_)));
            for modifier in parse_modifier(name, args, after_awq)? {
                let duplicate = modifiers.iter().any(|e: &Entry| {
                    e.group == group && e.modifier.class_name() == modifier.class_name()
                });
                if duplicate {
                    return Err(Error::Unsupported(format!(
                        "two {} in group `{group}_modifiers` are not supported yet",
                        modifier.class_name()
                    )));
                }
                modifiers.push(Entry {
                    group: group.clone(),
                    modifier,
                });
            }
        }
        let recipe = Recipe {
            stage: stage.unwrap_or_default(),
            modifiers,
        };
        recipe.validate()?;
        Ok(recipe)
    }

    /// Whole-recipe rules: one quantizing modifier; AWQ followed by it (llm-compressor's
    /// `Recipe.validate_model_after`) on per-channel or per-group weights.
    fn validate(&self) -> Result<()> {
        let names: Vec<&str> = self
            .modifiers
            .iter()
            .map(|e| e.modifier.class_name())
            .collect();
        let quantizing: Vec<usize> = (0..self.modifiers.len())
            .filter(|&i| self.modifiers[i].modifier.quant().is_some())
            .collect();
        if quantizing.len() > 1 {
            return Err(Error::Unsupported(format!(
                "more than one quantization modifier ({}) is not supported yet",
                names.join(", ")
            )));
        }
        for (idx, e) in self.modifiers.iter().enumerate() {
            let Modifier::Awq(awq) = &e.modifier else {
                continue;
            };
            if !quantizing.iter().any(|&q| q > idx) {
                return Err(Error::Recipe(format!(
                    "Recipe includes AWQModifier with no subsequent quantization modifier: \
                     {names:?}. AWQ must be run with a subsequent quantization modifier"
                )));
            }
            if awq.duo_scaling != DuoScaling::False {
                check_duo_scaling(&self.plan()?)?;
            }
        }
        if quantizing.is_empty() {
            return Err(Error::Unsupported(format!(
                "a recipe without QuantizationModifier or GPTQModifier ({}) is not supported yet",
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// The modifier that quantizes (validated: there is exactly one).
    fn quant(&self) -> &QuantModifier {
        self.modifiers
            .iter()
            .find_map(|e| e.modifier.quant())
            .expect("a validated recipe has a quantization modifier")
    }

    /// Reads and parses a recipe file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Recipe> {
        let text =
            crate::checkpoint::input::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Recipe::from_yaml(&text).map_err(|e| match e {
            Error::Recipe(m) => Error::Recipe(format!("{}: {m}", path.display())),
            Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The `recipe.yaml` llm-compressor writes for this recipe, byte for byte: every
    /// modifier in one stage (`get_yaml_serializable_dict`), grouped by group name in order
    /// of first appearance, arguments with defaults made explicit, dumped by PyYAML.
    pub fn to_yaml(&self) -> String {
        let mut groups: Vec<(String, Yaml)> = Vec::new();
        for e in &self.modifiers {
            let key = format!("{}_modifiers", e.group);
            let entry = (e.modifier.class_name().to_string(), e.modifier.to_yaml());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, Yaml::Map(mods))) => mods.push(entry),
                _ => groups.push((key, Yaml::Map(vec![entry]))),
            }
        }
        let stage = Yaml::Map(groups);
        pyyaml::dump(&Yaml::Map(vec![(format!("{}_stage", self.stage), stage)]))
    }

    /// The config groups and matching rules to quantize with (from the recipe's one
    /// `QuantizationModifier` or `GPTQModifier`).
    pub fn plan(&self) -> Result<QuantPlan> {
        let quant = self.quant();
        Ok(QuantPlan {
            groups: quant.groups()?,
            ignore: quant.ignore.clone(),
            bypass_divisibility_checks: quant.bypass_divisibility_checks,
            kv_cache_scheme: quant.kv_cache_scheme.clone(),
        })
    }
}

/// Where a quantize job's recipe comes from: a YAML file, or a recipe already built (a
/// shipped recipe, or the one `--scheme` stands for).
#[derive(Debug, Clone, PartialEq)]
pub enum RecipeSource {
    File(std::path::PathBuf),
    Parsed(Recipe),
}

impl RecipeSource {
    /// The recipe, read and parsed (files) or as given.
    pub fn load(&self) -> Result<Recipe> {
        match self {
            RecipeSource::File(path) => Recipe::from_file(path),
            RecipeSource::Parsed(recipe) => Ok(recipe.clone()),
        }
    }
}

/// YAML → JSON-like tree, duplicate keys last-wins as PyYAML; errors are one line.
fn parse_yaml(text: &str) -> Result<Value> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|e| {
        let message = e.to_string();
        let message = message
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim()
            .to_string();
        match e.location() {
            Some(loc) if !message.contains("line") => Error::Recipe(format!(
                "invalid YAML at line {} column {}: {message}",
                loc.line(),
                loc.column()
            )),
            _ => Error::Recipe(format!("invalid YAML: {message}")),
        }
    })
}

/// One modifier of the recipe (two for AWQ's old form).
fn parse_modifier(name: &str, args: &Value, after_awq: bool) -> Result<Vec<Modifier>> {
    Ok(match name {
        "QuantizationModifier" => vec![Modifier::Quantization(QuantModifier::parse(
            args, after_awq,
        )?)],
        "GPTQModifier" => vec![Modifier::Gptq(GptqModifier::parse(args)?)],
        "SmoothQuantModifier" => vec![Modifier::SmoothQuant(SmoothQuantModifier::parse(args)?)],
        "AWQModifier" => parse_awq(args)?,
        _ if OTHER_MODIFIERS.contains(&name) => {
            return Err(Error::Unsupported(format!(
                "modifier {name} is not supported yet"
            )))
        }
        _ => return Err(Error::Recipe(format!("unknown modifier {name}"))),
    })
}

/// `AWQModifier`; its quantization keys (the old form) go to a `QuantizationModifier`
/// that follows it, as llm-compressor's `modifiers.awq.AWQModifier` shim splits them.
fn parse_awq(args: &Value) -> Result<Vec<Modifier>> {
    let empty = serde_json::Map::new();
    let map = match args {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => {
            return Err(Error::Recipe(
                "AWQModifier: expected a mapping of arguments".into(),
            ))
        }
    };
    let (quant, own): (serde_json::Map<_, _>, serde_json::Map<_, _>) = map
        .clone()
        .into_iter()
        .partition(|(k, _)| MIXIN_KEYS.contains(&k.as_str()));
    let mut out = vec![Modifier::Awq(AwqModifier::parse(&own)?)];
    if !quant.is_empty() {
        let quant = QuantModifier::parse(&Value::Object(quant), true)?;
        out.push(Modifier::Quantization(quant));
    }
    Ok(out)
}

/// AWQ's `duo_scaling` needs per-channel or per-group weights (llm-compressor checks it on
/// each balance layer as calibration starts; qforge checks the plan's groups up front).
fn check_duo_scaling(plan: &QuantPlan) -> Result<()> {
    for g in &plan.groups {
        if g.weights
            .as_ref()
            .is_some_and(|w| w.strategy == Strategy::Tensor)
        {
            return Err(Error::Unsupported(format!(
                "AWQModifier: duo_scaling is only supported with per-channel quantization \
                 strategies (group or channel), but found TENSOR strategy on config group {}. \
                 Please set duo_scaling=False or use a per-channel quantization strategy.",
                g.name
            )));
        }
    }
    Ok(())
}

/// The error for a recipe without modifiers, pointing at a key that looks misplaced.
fn no_modifier_error(top: &serde_json::Map<String, Value>) -> Error {
    let hint = top
        .keys()
        .find(|k| !k.ends_with("_stage"))
        .map(|k| format!(" (top-level key `{k}` is not a `<name>_stage`, so it is ignored)"))
        .unwrap_or_default();
    Error::Recipe(format!(
        "no modifier found: expected `<name>_stage: <name>_modifiers: QuantizationModifier: \
         ...`{hint}"
    ))
}
