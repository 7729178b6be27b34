//! The recipes shipped in `recipes/`, compiled into the binary so that `--recipe fp8_dynamic`
//! works after `cargo install` (no checkout needed), and the one-modifier recipe that
//! `--scheme PRESET` stands for.

use super::{find_preset, Recipe, PRESETS};
use crate::{Error, Result};

/// A recipe compiled into the binary.
pub struct ShippedRecipe {
    /// The file stem in `recipes/` (what `--recipe` accepts).
    pub name: &'static str,
    /// The YAML text, comments included.
    pub yaml: &'static str,
}

macro_rules! shipped {
    ($($name:literal),* $(,)?) => {
        &[$(ShippedRecipe {
            name: $name,
            yaml: include_str!(concat!("../../recipes/", $name, ".yaml")),
        }),*]
    };
}

/// Every file of `recipes/`, in `qforge recipes` order.
pub static SHIPPED: &[ShippedRecipe] = shipped!(
    "fp8_dynamic",
    "fp8_dynamic_config_groups",
    "fp8_block",
    "w8a8",
    "w8a16",
    "w4a16",
    "w4a16_asym",
    "nvfp4a16",
    "mxfp4a16",
    "gptq_w4a16",
    "gptq_w8a8",
    "fp8_static",
);

impl ShippedRecipe {
    /// The parsed recipe (the shipped files are valid: a test parses every one).
    pub fn recipe(&self) -> Result<Recipe> {
        Recipe::from_yaml(self.yaml)
            .map_err(|e| Error::Recipe(format!("shipped recipe {}: {e}", self.name)))
    }

    /// The recipe's scheme: the `scheme:` line, or "config_groups" when it spells them out.
    pub fn scheme(&self) -> &'static str {
        self.yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("scheme:"))
            .map(str::trim)
            .unwrap_or("config_groups")
    }

    /// The modifier that needs calibration data (`--dataset`), if any.
    pub fn requires_calibration(&self) -> Option<&'static str> {
        self.recipe().ok()?.requires_calibration()
    }

    /// The first sentence of the file's leading comment, without the scheme name it starts
    /// with (`# FP8_DYNAMIC: FP8 E4M3 weights ...` gives `FP8 E4M3 weights ...`), and
    /// "Needs --dataset." for a calibrated recipe.
    pub fn summary(&self) -> String {
        let comment: Vec<&str> = self
            .yaml
            .lines()
            .map_while(|l| l.strip_prefix('#'))
            .map(str::trim)
            .collect();
        let text = comment.join(" ");
        let text = match text.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') || head.contains('(') => rest,
            _ => text.as_str(),
        };
        let sentence = text.split(". ").next().unwrap_or("").trim_end_matches('.');
        match self.requires_calibration() {
            Some(_) => format!("{sentence}. Needs --dataset."),
            None => format!("{sentence}."),
        }
    }
}

/// The shipped recipe called `name` (a file stem of `recipes/`, case-insensitive).
pub fn find_shipped(name: &str) -> Option<&'static ShippedRecipe> {
    let stem = name.strip_suffix(".yaml").unwrap_or(name);
    SHIPPED.iter().find(|r| r.name.eq_ignore_ascii_case(stem))
}

/// The names of the shipped recipes, comma-separated (for error messages).
pub fn shipped_names() -> String {
    SHIPPED
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The recipe llm-compressor's `QuantizationModifier(targets="Linear", scheme=PRESET,
/// ignore=IGNORE)` stands for, as its examples write it (`oneshot(recipe=...)`); its
/// `recipe.yaml` is then what llm-compressor writes for that modifier. The preset name is
/// case-insensitive and written in its canonical (upper-case) spelling.
pub fn scheme_recipe(scheme: &str, ignore: &[String]) -> Result<Recipe> {
    let preset = find_preset(scheme).ok_or_else(|| {
        let names: Vec<&str> = PRESETS
            .iter()
            .filter(|p| p.scheme.is_some())
            .map(|p| p.name)
            .collect();
        Error::Recipe(format!(
            "--scheme {scheme}: unknown preset (qforge writes: {})",
            names.join(", ")
        ))
    })?;
    // JSON strings are YAML flow scalars, so any module name or `re:` pattern survives.
    let quoted: Vec<String> = ignore
        .iter()
        .map(|s| serde_json::Value::from(s.as_str()).to_string())
        .collect();
    let yaml = format!(
        "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n      \
         targets: [Linear]\n      ignore: [{}]\n      scheme: {}\n",
        quoted.join(", "),
        preset.name
    );
    Recipe::from_yaml(&yaml).map_err(|e| match e {
        Error::Recipe(m) => Error::Recipe(format!("--scheme {scheme}: {m}")),
        Error::Unsupported(m) => Error::Unsupported(format!("--scheme {scheme}: {m}")),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_recipe_parses_and_summarises() {
        for r in SHIPPED {
            r.recipe().unwrap();
            let s = r.summary();
            assert!(
                s.len() > 20 && !s.starts_with(r.scheme()),
                "{}: {s}",
                r.name
            );
        }
        assert_eq!(
            find_shipped("FP8_DYNAMIC.yaml").unwrap().name,
            "fp8_dynamic"
        );
        assert_eq!(find_shipped("w4a16").unwrap().scheme(), "W4A16");
        assert!(find_shipped("fp8").is_none());
    }

    #[test]
    fn every_file_of_recipes_is_shipped() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".yaml").map(str::to_string)
            })
            .collect();
        files.sort();
        let mut shipped: Vec<&str> = SHIPPED.iter().map(|r| r.name).collect();
        shipped.sort();
        assert_eq!(files, shipped);
    }

    #[test]
    fn a_scheme_is_the_shipped_recipe_of_that_preset() {
        let lm_head = vec!["lm_head".to_string()];
        let data_free = SHIPPED
            .iter()
            .filter(|r| r.scheme() != "config_groups" && r.requires_calibration().is_none());
        for r in data_free {
            let from_scheme = scheme_recipe(&r.scheme().to_lowercase(), &lm_head).unwrap();
            assert_eq!(
                from_scheme.to_yaml(),
                r.recipe().unwrap().to_yaml(),
                "{}",
                r.name
            );
        }
        let e = scheme_recipe("FP9", &lm_head).unwrap_err().to_string();
        assert!(
            e.contains("unknown preset") && e.contains("FP8_DYNAMIC"),
            "{e}"
        );
        let e = scheme_recipe("W4AFP8", &lm_head).unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
    }
}
