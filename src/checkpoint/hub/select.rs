//! Which files of a repository qforge needs: the config, the safetensors weights (the shards
//! named by the index when there is one) and the tokenizer. Everything else (`*.bin`, `*.pth`,
//! `*.gguf`, `original/`, README, images) is left on the hub.

use std::collections::BTreeSet;
use std::path::Path;

/// The shard index of a sharded safetensors checkpoint.
pub const INDEX: &str = "model.safetensors.index.json";

/// Config files, always fetched when present (config.json is required).
const CONFIGS: &[&str] = &["config.json", "generation_config.json"];

/// Tokenizer and chat-template files, current and legacy, fetched when present.
const TOKENIZER: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
];

/// The files to fetch from a repository listing, before the index is read: configs,
/// tokenizer files, and either the index or every top-level `*.safetensors`.
/// Errors name what is missing for the repo to be usable.
pub fn wanted(listing: &[String]) -> Result<Vec<String>, String> {
    let present: BTreeSet<&str> = listing.iter().map(String::as_str).collect();
    if !present.contains("config.json") {
        return Err("has no config.json (not a Transformers model repository?)".into());
    }
    let mut files: Vec<String> = CONFIGS
        .iter()
        .chain(TOKENIZER)
        .filter(|f| present.contains(**f))
        .map(|f| f.to_string())
        .collect();
    if present.contains(INDEX) {
        files.push(INDEX.to_string());
        return Ok(files);
    }
    let weights: Vec<String> = listing
        .iter()
        .filter(|f| !f.contains('/') && f.ends_with(".safetensors"))
        .cloned()
        .collect();
    if weights.is_empty() {
        let hint = if listing.iter().any(|f| f.ends_with(".bin")) {
            " (only PyTorch *.bin weights; qforge reads safetensors)"
        } else {
            ""
        };
        return Err(format!("has no *.safetensors weights{hint}"));
    }
    files.extend(weights);
    Ok(files)
}

/// The distinct shard files named by an index's `weight_map`, sorted.
pub fn shards_from_index(text: &str) -> Result<Vec<String>, String> {
    let index: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("has no weight_map object")?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| is_safe_path(f))
            .ok_or_else(|| format!("maps tensor {tensor} to an invalid file name"))?;
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err("has an empty weight_map".into());
    }
    Ok(shards.into_iter().collect())
}

/// What a cached snapshot lacks to be usable, empty when complete: config.json, and the
/// index's shards (or at least one `*.safetensors` without an index).
pub fn missing_locally(dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !dir.join("config.json").is_file() {
        missing.push("config.json".to_string());
    }
    let index = dir.join(INDEX);
    if index.is_file() {
        let shards = std::fs::read_to_string(&index)
            .map_err(|e| e.to_string())
            .and_then(|t| shards_from_index(&t));
        match shards {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
            Err(_) => missing.push(INDEX.to_string()),
        }
        return missing;
    }
    let has_weights = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".safetensors") && e.path().is_file()
        })
    });
    if !has_weights {
        missing.push("*.safetensors".to_string());
    }
    missing
}

/// A relative path inside the repo that cannot escape the snapshot directory.
pub fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_weights_config_and_tokenizer_only() {
        let listing = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "model.gguf",
            "original/consolidated.00.pth",
            "original/tokenizer.model",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
            "merges.txt",
        ]);
        let got = wanted(&listing).unwrap();
        let expect = names(&[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
            "merges.txt",
            "model.safetensors",
        ]);
        assert_eq!(got, expect);
    }

    #[test]
    fn index_replaces_weight_listing() {
        let listing = names(&["config.json", INDEX, "consolidated.safetensors"]);
        assert_eq!(wanted(&listing).unwrap(), names(&["config.json", INDEX]));
        let index = r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        let shards = shards_from_index(index).unwrap();
        assert_eq!(shards, names(&["m-1.safetensors", "m-2.safetensors"]));
        let bad = r#"{"weight_map":{"a":"../x.safetensors"}}"#;
        assert!(shards_from_index(bad).unwrap_err().contains("tensor a"));
    }

    #[test]
    fn explains_unusable_repos() {
        let err = wanted(&names(&["README.md"])).unwrap_err();
        assert!(err.contains("config.json"), "{err}");
        let err = wanted(&names(&["config.json", "pytorch_model.bin"])).unwrap_err();
        assert!(err.contains("*.bin"), "{err}");
    }
}
