//! The files written next to the weights: generation config and tokenizer files, as
//! transformers' `save_pretrained` writes them for a local source model.

use crate::output::{copy_file, Staging};
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Copied byte for byte when present.
const COPIED: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Copies the generation and tokenizer files of `src` into the staging directory.
/// `tokenizer_config.json` is rewritten the way transformers saves it, and its chat template
/// (or the source's `chat_template.jinja`) goes to `chat_template.jinja`.
pub fn copy_sidecar_files(src: &Path, staging: &Staging) -> Result<()> {
    for name in COPIED {
        let from = src.join(name);
        if from.is_file() {
            copy_file(&from, &staging.path().join(name))?;
        }
    }
    let mut template = read_optional(&src.join("chat_template.jinja"))?;
    let cfg_path = src.join("tokenizer_config.json");
    if let Some(text) = read_optional(&cfg_path)? {
        let cfg: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{}: invalid JSON: {e}", cfg_path.display())))?;
        if template.is_none() {
            template = cfg
                .get("chat_template")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        staging.write(
            "tokenizer_config.json",
            crate::format::tokenizer_config(&cfg),
        )?;
    }
    if let Some(t) = template {
        staging.write("chat_template.jinja", t)?;
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match crate::checkpoint::input::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}
