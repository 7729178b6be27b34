//! llm-compressor recipes: YAML → [`Recipe`] → [`QuantPlan`], and the `recipe.yaml`
//! llm-compressor writes next to the quantized model.
//!
//! Grammar (llm-compressor 0.14 `Recipe.from_dict`): the top level is a mapping; each key
//! ending in `_stage` whose value is a mapping is a stage; inside it each key ending in
//! `_modifiers` whose value is a mapping is a modifier group; inside that, modifier class
//! name → arguments. Every other key is ignored, as llm-compressor ignores it (`version:`,
//! `metadata:`, a bare top-level modifier list...). The recipe's stage name is the last
//! stage's key with every `_stage` removed; each modifier keeps its group name.
//! Only `QuantizationModifier` is implemented.

pub mod arch;
mod args;
pub mod matcher;
mod modifier;
mod plan;
mod scheme;
mod shipped;

pub use args::{Dynamic, QuantArgs, QuantType, Role, Strategy};
pub use plan::{ConfigGroup, QuantPlan, COMPRESSED_TENSORS_VERSION};
pub use scheme::{find_preset, infer_format, preset_of, Preset, PresetArgs, Scheme, PRESETS};
pub use shipped::{find_shipped, scheme_recipe, shipped_names, ShippedRecipe, SHIPPED};

use crate::format::pyyaml::{self, Yaml};
use crate::{Error, Result};
use modifier::QuantModifier;
use serde_json::Value;
use std::path::Path;

/// A parsed llm-compressor recipe holding one `QuantizationModifier`.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// Stage name without `_stage` (llm-compressor's `Recipe.stage`).
    stage: String,
    /// The modifier's group name without `_modifiers`.
    group: String,
    modifier: QuantModifier,
}

/// Modifiers of llm-compressor 0.14 that qforge does not implement.
const OTHER_MODIFIERS: &[&str] = &[
    "AWQModifier",
    "AutoRoundModifier",
    "ConstantPruningModifier",
    "GPTQModifier",
    "LogarithmicEqualizationModifier",
    "MagnitudePruningModifier",
    "QuIPModifier",
    "REAPPruningModifier",
    "SmoothQuantModifier",
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
        let mut recipe = None;
        for (group, name, args) in found {
            check_modifier_name(name)?;
            if recipe.is_some() {
                return Err(Error::Unsupported(
                    "more than one QuantizationModifier is not supported yet".into(),
                ));
            }
            let modifier = QuantModifier::parse(args)?;
            let stage = stage.clone().unwrap_or_default();
            recipe = Some(Recipe {
                stage,
                group,
                modifier,
            });
        }
        recipe.ok_or_else(|| no_modifier_error(top))
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

    /// The `recipe.yaml` llm-compressor writes for this recipe, byte for byte: the
    /// modifier's arguments with defaults made explicit, dumped by PyYAML.
    pub fn to_yaml(&self) -> String {
        let mods = Yaml::Map(vec![(
            "QuantizationModifier".to_string(),
            self.modifier.to_yaml(),
        )]);
        let group = Yaml::Map(vec![(format!("{}_modifiers", self.group), mods)]);
        pyyaml::dump(&Yaml::Map(vec![(format!("{}_stage", self.stage), group)]))
    }

    /// The config groups and matching rules to quantize with.
    pub fn plan(&self) -> Result<QuantPlan> {
        Ok(QuantPlan {
            groups: self.modifier.groups()?,
            ignore: self.modifier.ignore.clone(),
            bypass_divisibility_checks: self.modifier.bypass_divisibility_checks,
            kv_cache_scheme: None,
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

fn check_modifier_name(name: &str) -> Result<()> {
    if name == "QuantizationModifier" {
        Ok(())
    } else if OTHER_MODIFIERS.contains(&name) {
        Err(Error::Unsupported(format!(
            "modifier {name} is not supported yet"
        )))
    } else {
        Err(Error::Recipe(format!("unknown modifier {name}")))
    }
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
