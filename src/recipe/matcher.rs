//! compressed-tensors' target and ignore matching (`match_name`, `_match_class`): the one
//! matcher that the recipe's plan and the runtime's reading of `quantization_config` share,
//! so that every pattern qforge writes, qforge reads back.

use crate::{Error, Result};
use fancy_regex::Regex;

/// A target or ignore entry: `re:<pattern>` (Python `re.match`, anchored at the start
/// only; `fancy_regex` supports Python's look-around and back-references) or an exact
/// string, which matches a module name or a class name.
pub struct Matcher {
    text: String,
    regex: Option<Regex>,
}

/// The class names a `torch.nn.Linear` answers to in compressed-tensors' `_match_class`
/// (every class in its MRO).
const LINEAR_CLASSES: &[&str] = &["Linear", "Module"];

impl Matcher {
    /// Compiles `text`; an invalid `re:` pattern is an error naming it and the reason.
    pub fn new(text: &str) -> Result<Matcher> {
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
    pub fn matches_name(&self, name: &str) -> Result<bool> {
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
    pub fn matches_class(&self) -> bool {
        LINEAR_CLASSES.contains(&self.text.as_str())
    }

    /// Whether the entry selects the Linear module `name`, by its name or by its class.
    pub fn matches(&self, name: &str) -> Result<bool> {
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
pub fn match_pattern(pattern: &str, name: &str) -> Result<bool> {
    Matcher::new(pattern)?.matches_name(name)
}
