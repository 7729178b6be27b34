//! What to quantize: the config groups of a recipe, which Linear module each one takes
//! (compressed-tensors' target/ignore matching), and the `quantization_config` written
//! into `config.json`.

use super::args::QuantArgs;
use super::scheme::Scheme;
use crate::{Error, Result};
use fancy_regex::Regex;
use serde_json::{json, Map, Value};

/// compressed-tensors version whose output qforge reproduces.
pub const COMPRESSED_TENSORS_VERSION: &str = "0.19.0";

/// One compressed-tensors config group (`group_0`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigGroup {
    pub name: String,
    pub targets: Vec<String>,
    pub weights: Option<QuantArgs>,
    pub input_activations: Option<QuantArgs>,
    pub output_activations: Option<QuantArgs>,
    /// The compression format of the group (e.g. `float-quantized`).
    pub format: Option<String>,
    /// The implemented scheme these args are.
    pub preset: Scheme,
}

/// The resolved quantization of a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPlan {
    pub groups: Vec<ConfigGroup>,
    /// The recipe's ignore patterns (not the expanded module list).
    pub ignore: Vec<String>,
    pub bypass_divisibility_checks: bool,
    /// Always `None` for now (recipes with a kv cache scheme are rejected).
    pub kv_cache_scheme: Option<QuantArgs>,
}

/// A target or ignore entry: `re:<pattern>` (Python `re.match`, anchored at the start
/// only; `fancy_regex` supports Python's look-around and back-references) or an exact
/// string, which matches a module name or a class name.
struct Matcher {
    text: String,
    regex: Option<Regex>,
}

/// The class names a `torch.nn.Linear` answers to in compressed-tensors' `_match_class`
/// (every class in its MRO).
const LINEAR_CLASSES: &[&str] = &["Linear", "Module"];

impl Matcher {
    fn new(text: &str) -> Result<Matcher> {
        let regex = match text.strip_prefix("re:") {
            Some(pattern) => {
                let invalid = |e: fancy_regex::Error| {
                    let reason = regex_error_reason(&e);
                    Error::Recipe(format!("invalid regular expression `{text}`: {reason}"))
                };
                // Check the pattern as written (so error positions refer to it), then
                // anchor it at the start as `re.match` does.
                Regex::new(pattern).map_err(invalid)?;
                Some(Regex::new(&format!("^(?:{pattern})")).map_err(invalid)?)
            }
            None => None,
        };
        Ok(Matcher {
            text: text.to_string(),
            regex,
        })
    }

    /// compressed-tensors' `match_name`.
    fn matches_name(&self, name: &str) -> Result<bool> {
        match &self.regex {
            Some(re) => re.is_match(name).map_err(|e| {
                Error::Recipe(format!(
                    "regular expression `{}` failed on `{name}`: {e}",
                    self.text
                ))
            }),
            None => Ok(self.text == name),
        }
    }

    /// compressed-tensors' `_match_class` for a Linear (a regex never matches a class).
    fn matches_class(&self) -> bool {
        LINEAR_CLASSES.contains(&self.text.as_str())
    }

    fn matches(&self, name: &str) -> Result<bool> {
        Ok(self.matches_class() || self.matches_name(name)?)
    }
}

/// The innermost cause of a regex error, on one line: the last line of the deepest
/// `source()` (the regex crate's messages are multi-line with the reason last).
fn regex_error_reason(e: &fancy_regex::Error) -> String {
    let mut err: &dyn std::error::Error = e;
    // fancy-regex does not chain the regex crate's error as a source: unwrap it by hand.
    if let fancy_regex::Error::CompileError(c) = e {
        if let fancy_regex::CompileError::InnerError(inner) = c.as_ref() {
            err = inner;
        }
    }
    while let Some(inner) = err.source() {
        err = inner;
    }
    let text = err.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid");
    last.trim().trim_start_matches("error: ").to_string()
}

/// Whether `pattern` (a target or ignore entry) matches module `name`; `Error::Recipe`
/// when it is an invalid `re:` pattern.
pub(crate) fn match_pattern(pattern: &str, name: &str) -> Result<bool> {
    Matcher::new(pattern)?.matches_name(name)
}

impl QuantPlan {
    /// For each Linear module name (in module order), the index of the config group that
    /// quantizes it, or `None` when it is ignored or not targeted.
    ///
    /// As compressed-tensors' `apply_quantization_config`: a module is quantized when some
    /// target matches its name or class (`Linear`) and no ignore entry does. When several
    /// targets match, targets are ordered by `("re:" in t, t)`, name matches before class
    /// matches, and the first one wins; a target listed by several groups belongs to the
    /// last of them.
    pub fn assign(&self, linear_modules: &[String]) -> Result<Vec<Option<usize>>> {
        let ignore = self
            .ignore
            .iter()
            .map(|t| Matcher::new(t))
            .collect::<Result<Vec<_>>>()?;
        // target -> group, later groups overriding earlier ones (Python dict semantics).
        let mut owner: Vec<(String, usize)> = Vec::new();
        for (idx, group) in self.groups.iter().enumerate() {
            for t in &group.targets {
                match owner.iter_mut().find(|(name, _)| name == t) {
                    Some(entry) => entry.1 = idx,
                    None => owner.push((t.clone(), idx)),
                }
            }
        }
        owner.sort_by(|a, b| (a.0.contains("re:"), &a.0).cmp(&(b.0.contains("re:"), &b.0)));
        let targets = owner
            .iter()
            .map(|(t, idx)| Ok((Matcher::new(t)?, *idx)))
            .collect::<Result<Vec<_>>>()?;
        let pick = |name: &str| -> Result<Option<usize>> {
            for m in &ignore {
                if m.matches(name)? {
                    return Ok(None);
                }
            }
            for (m, idx) in &targets {
                if m.matches_name(name)? {
                    return Ok(Some(*idx));
                }
            }
            Ok(targets
                .iter()
                .find(|(m, _)| m.matches_class())
                .map(|(_, idx)| *idx))
        };
        linear_modules.iter().map(|name| pick(name)).collect()
    }

    /// The `quantization_config` object llm-compressor writes into `config.json`, given
    /// the full names of every Linear left unquantized (in module order).
    pub fn quantization_config(&self, ignored: &[String]) -> Value {
        let args = |a: &Option<QuantArgs>| a.as_ref().map_or(Value::Null, QuantArgs::to_json);
        let mut groups = Map::new();
        let mut formats: Vec<&str> = Vec::new();
        for g in &self.groups {
            let format = g.format.as_deref().unwrap_or("dense");
            if !formats.contains(&format) {
                formats.push(format);
            }
            let group = json!({
                "format": format,
                "input_activations": args(&g.input_activations),
                "output_activations": args(&g.output_activations),
                "targets": g.targets,
                "weights": args(&g.weights),
            });
            groups.insert(g.name.clone(), group);
        }
        let format = match formats[..] {
            [] => "dense",
            [one] => one,
            _ => "mixed-precision",
        };
        json!({
            "config_groups": groups,
            "format": format,
            "global_compression_ratio": null,
            "ignore": ignored,
            "kv_cache_scheme": args(&self.kv_cache_scheme),
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
            "sparsity_config": {},
            "transform_config": {},
            "version": COMPRESSED_TENSORS_VERSION,
        })
    }
}
