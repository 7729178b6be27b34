//! Where a dataset's rows come from: one local file, or the files of one split in a folder or
//! a Hub dataset snapshot, picked as `datasets.load_dataset` picks them
//! (`datasets/data_files.py`): the README's `configs:` data files if it declares them, else the
//! first default pattern group that matches — sharded `data/{split}-NNNNN-of-NNNNN.*`, split
//! keywords in a folder name, split keywords in a file name — else every file is `train`.

use super::source::Source;
use super::table::{Format, Row};
use crate::checkpoint::hub::HubConfig;
use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Rows read from a source, and how to name it in messages.
#[derive(Debug, Clone)]
pub struct Rows {
    pub rows: Vec<Row>,
    pub origin: String,
}

/// Reads the rows of `split` (default `train`) of `source`: a data file, a folder, or a Hub
/// dataset id (downloaded into the Hugging Face cache, see `checkpoint::hub`).
pub fn load_rows(source: &str, split: Option<&str>, config: Option<&str>) -> Result<Rows> {
    load_rows_with(source, split, config, &HubConfig::from_env())
}

/// [`load_rows`] with an explicit Hub configuration instead of the process environment.
pub fn load_rows_with(
    source: &str,
    split: Option<&str>,
    config: Option<&str>,
    hub: &HubConfig,
) -> Result<Rows> {
    let data = open_with(source, split, config, hub)?;
    Ok(Rows {
        rows: data.all_rows()?,
        origin: data.origin,
    })
}

/// The files of `split` of `source` (a file, a folder, a Hub id; Hub files downloaded), not
/// read yet: see [`Source`].
pub fn open_with(
    source: &str,
    split: Option<&str>,
    config: Option<&str>,
    hub: &HubConfig,
) -> Result<Source> {
    let path = Path::new(source);
    if path.is_file() || (Format::of(path).is_some() && !path.is_dir()) {
        if split.is_some() || config.is_some() {
            // A single file is one split, as datasets' `data_files=path` makes it `train`.
            check_split_of_file(source, split)?;
        }
        return Source::open(vec![path.to_path_buf()], source.to_string());
    }
    let (dir, chosen) = if path.is_dir() {
        let listing = list_files(path)?;
        let readme = std::fs::read_to_string(path.join("README.md")).ok();
        let chosen = select_files(&listing, readme.as_deref(), split, config, source)?;
        (path.to_path_buf(), chosen)
    } else if crate::checkpoint::hub::is_repo_id(source) {
        let pick = |listing: &[String], readme: Option<&str>| {
            select_files(&visible(listing), readme, split, config, source)
        };
        let opts = crate::checkpoint::hub::HubOptions {
            revision: None,
            progress: true,
        };
        crate::checkpoint::hub::resolve_dataset_with(source, &opts, hub, &pick)?
    } else {
        return Err(Error::Dataset(format!(
            "--dataset {source}: no such file or folder, and not a Hugging Face dataset id \
             (org/name)"
        )));
    };
    let split = split.unwrap_or("train");
    let paths = chosen.iter().map(|f| dir.join(f)).collect();
    Source::open(paths, format!("{source} (split '{split}')"))
}

fn check_split_of_file(source: &str, split: Option<&str>) -> Result<()> {
    match split {
        None | Some("train") => Ok(()),
        Some(s) => Err(Error::Dataset(format!(
            "--dataset {source} is a single file, which is the 'train' split; there is no \
             split '{s}'"
        ))),
    }
}

/// Every file under `dir`, relative, with `/` separators, sorted, without the hidden ones.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    Ok(visible(&crate::checkpoint::hub::list_files(dir)?))
}

/// Leaves out paths with a hidden part (`.x`, `_x`), as `datasets` does.
fn visible(listing: &[String]) -> Vec<String> {
    listing
        .iter()
        .filter(|f| !f.split('/').any(|p| p.starts_with(['.', '_'])))
        .cloned()
        .collect()
}

/// The data files of `split` (default `train`) in a listing, for `config` when named.
pub fn select_files(
    listing: &[String],
    readme: Option<&str>,
    split: Option<&str>,
    config: Option<&str>,
    source: &str,
) -> Result<Vec<String>> {
    let split = split.unwrap_or("train");
    if split.contains(['[', ']']) {
        return Err(Error::Dataset(format!(
            "--dataset-split '{split}': split slicing is not supported; use \
             --num-calibration-samples to take fewer samples"
        )));
    }
    let splits = match readme
        .map(|r| readme_configs(r, source))
        .transpose()?
        .flatten()
    {
        Some(configs) => configs.splits(config, &data_files(listing), source)?,
        None => {
            let scope: Vec<String> = match config {
                Some(c) => scoped(listing, c, source)?,
                None => listing.to_vec(),
            };
            default_splits(&data_files(&scope))
        }
    };
    let Some((_, files)) = splits.iter().find(|(s, _)| s == split) else {
        let names: Vec<&str> = splits.iter().map(|(s, _)| s.as_str()).collect();
        return Err(Error::Dataset(format!(
            "{source}: no split '{split}'; its splits are: {}",
            if names.is_empty() {
                "(none: no data files)".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    let files: Vec<String> = files
        .iter()
        .filter(|f| Format::of(Path::new(f)).is_some())
        .cloned()
        .collect();
    if files.is_empty() {
        return Err(Error::Dataset(format!(
            "{source}: split '{split}' has no .jsonl, .json, .parquet or .txt files"
        )));
    }
    Ok(files)
}

/// Files under `{config}/`, for a layout without README configs (the Hub's parquet export:
/// `{config}/{split}/NNNN.parquet`).
fn scoped(listing: &[String], config: &str, source: &str) -> Result<Vec<String>> {
    let prefix = format!("{config}/");
    let files: Vec<String> = listing
        .iter()
        .filter(|f| f.starts_with(&prefix))
        .cloned()
        .collect();
    if files.is_empty() {
        return Err(Error::Dataset(format!(
            "{source}: no configuration '{config}' (no README configs, no folder '{config}')"
        )));
    }
    Ok(files)
}

const IGNORED: [&str; 6] = [
    "README.md",
    "config.json",
    "dataset_info.json",
    "dataset_infos.json",
    "dummy_data.zip",
    "dataset_dict.json",
];

fn data_files(listing: &[String]) -> Vec<String> {
    listing
        .iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            !IGNORED.contains(&name)
        })
        .cloned()
        .collect()
}

const SPLIT_KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

type Splits = Vec<(String, Vec<String>)>;

/// `datasets`' default patterns, tried in order; the first group with any match wins.
fn default_splits(files: &[String]) -> Splits {
    let sharded = sharded_splits(files);
    if !sharded.is_empty() {
        return sharded;
    }
    let in_dir = |f: &String, kw: &str| {
        let mut parts: Vec<&str> = f.split('/').collect();
        parts.pop();
        parts.iter().any(|d| has_keyword(d, kw))
    };
    let in_name = |f: &String, kw: &str| {
        let name = f.rsplit('/').next().unwrap_or(f);
        name.strip_prefix(kw)
            .is_some_and(|rest| rest.starts_with(is_sep))
            || has_inner_keyword(name, kw)
    };
    for matcher in [&in_dir as &dyn Fn(&String, &str) -> bool, &in_name] {
        let splits: Splits = SPLIT_KEYWORDS
            .iter()
            .map(|(split, kws)| {
                let matched = files
                    .iter()
                    .filter(|f| kws.iter().any(|kw| matcher(f, kw)))
                    .cloned()
                    .collect();
                (split.to_string(), matched)
            })
            .filter(|(_, m): &(String, Vec<String>)| !m.is_empty())
            .collect();
        if !splits.is_empty() {
            return splits;
        }
    }
    if files.is_empty() {
        Vec::new()
    } else {
        vec![("train".to_string(), files.to_vec())]
    }
}

fn is_sep(c: char) -> bool {
    matches!(c, '-' | '.' | '_' | ' ') || c.is_ascii_digit()
}

/// A folder name that is the keyword, or holds it between separators (`{kw}`, `{kw}-x`,
/// `x-{kw}`, `x-{kw}-y`).
fn has_keyword(part: &str, kw: &str) -> bool {
    part.match_indices(kw).any(|(i, _)| {
        let before = part[..i].chars().next_back();
        let after = part[i + kw.len()..].chars().next();
        before.is_none_or(is_sep) && after.is_none_or(is_sep)
    })
}

/// A file name holding `{sep}{kw}{sep}` (`**/*[sep]{kw}[sep]*`).
fn has_inner_keyword(name: &str, kw: &str) -> bool {
    name.match_indices(kw).any(|(i, _)| {
        let before = name[..i].chars().next_back();
        let after = name[i + kw.len()..].chars().next();
        before.is_some_and(is_sep) && after.is_some_and(is_sep)
    })
}

/// `data/{split}-NNNNN-of-NNNNN*.*`, the layout `push_to_hub` writes.
fn sharded_splits(files: &[String]) -> Splits {
    let re = regex::Regex::new(r"^data/([^/]+?)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*$").expect("valid");
    let mut splits: Splits = Vec::new();
    for f in files {
        if let Some(c) = re.captures(f) {
            let split = c[1].to_string();
            match splits.iter_mut().find(|(s, _)| *s == split) {
                Some((_, v)) => v.push(f.clone()),
                None => splits.push((split, vec![f.clone()])),
            }
        }
    }
    splits
}

/// The README's YAML `configs:` list, when it has one.
struct Configs(Vec<Value>);

/// The `configs:` of the dataset card's YAML header (`---` … `---`), if any.
fn readme_configs(readme: &str, source: &str) -> Result<Option<Configs>> {
    let Some(rest) = readme
        .strip_prefix("---\n")
        .or_else(|| readme.strip_prefix("---\r\n"))
    else {
        return Ok(None);
    };
    let Some(end) = rest.find("\n---") else {
        return Ok(None);
    };
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        with_snippet: false,
    };
    let yaml: Value = serde_saphyr::from_str_with_options(&rest[..end], options).map_err(|e| {
        let first = e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_string();
        Error::Dataset(format!(
            "{source}: README.md has an invalid YAML header: {first}"
        ))
    })?;
    match yaml.get("configs") {
        Some(Value::Array(list)) if !list.is_empty() => Ok(Some(Configs(list.clone()))),
        _ => Ok(None),
    }
}

impl Configs {
    fn name(c: &Value) -> &str {
        c.get("config_name")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }

    /// The named config, else the one marked `default: true`, else one named `default`,
    /// else the only one.
    fn pick(&self, config: Option<&str>, source: &str) -> Result<&Value> {
        let names: Vec<&str> = self.0.iter().map(Self::name).collect();
        let found = match config {
            Some(want) => self.0.iter().find(|c| Self::name(c) == want),
            None => self
                .0
                .iter()
                .find(|c| c.get("default").and_then(Value::as_bool) == Some(true))
                .or_else(|| self.0.iter().find(|c| Self::name(c) == "default"))
                .or_else(|| (self.0.len() == 1).then(|| &self.0[0])),
        };
        found.ok_or_else(|| {
            let what = match config {
                Some(c) => format!("no configuration '{c}'"),
                None => "several configurations and none is the default; name one with \
                         --dataset-config"
                    .to_string(),
            };
            Error::Dataset(format!(
                "{source}: {what}; its configurations are: {}",
                names.join(", ")
            ))
        })
    }

    /// The config's splits: `data_files` as a pattern or list of patterns (all `train`), a
    /// list of `{split, path}`, or a map split → pattern(s); patterns matched on `listing`.
    fn splits(&self, config: Option<&str>, listing: &[String], source: &str) -> Result<Splits> {
        let chosen = self.pick(config, source)?;
        let patterns: Vec<(String, Vec<String>)> = match chosen.get("data_files") {
            None => return Ok(default_splits(listing)),
            Some(Value::String(p)) => vec![("train".into(), vec![p.clone()])],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                vec![("train".into(), strings(&Value::Array(items.clone())))]
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    let split = i.get("split").and_then(Value::as_str).unwrap_or("train");
                    (
                        split.to_string(),
                        i.get("path").map(strings).unwrap_or_default(),
                    )
                })
                .collect(),
            Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), strings(v))).collect(),
            Some(_) => {
                return Err(Error::Dataset(format!(
                    "{source}: README.md's data_files of '{}' is not a pattern, a list or a map",
                    Self::name(chosen)
                )))
            }
        };
        Ok(patterns
            .into_iter()
            .map(|(split, pats)| {
                let files = listing
                    .iter()
                    .filter(|f| {
                        pats.iter()
                            .any(|p| glob_match(p.trim_start_matches("./"), f))
                    })
                    .cloned()
                    .collect();
                (split, files)
            })
            .collect())
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// fsspec-style glob on `/`-separated paths: `*` and `?` stay within a part, `**` spans
/// parts, `[…]` is a character class (`[!…]` negated).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), path.chars().collect());
    glob_at(&p, &s)
}

fn glob_at(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = if p.get(2) == Some(&'/') {
                &p[3..]
            } else {
                &p[2..]
            };
            // `**/` also matches no folder at all.
            (p.get(2) == Some(&'/') && glob_at(rest, s))
                || (0..=s.len()).any(|i| glob_at(rest, &s[i..]))
        }
        Some('*') => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != '/')
            .any(|i| glob_at(&p[1..], &s[i..])),
        Some('?') => s.first().is_some_and(|&c| c != '/') && glob_at(&p[1..], &s[1..]),
        Some('[') => match (class_end(p), s.first()) {
            (Some(end), Some(&c)) => class_has(&p[1..end], c) && glob_at(&p[end + 1..], &s[1..]),
            (None, Some(&'[')) => glob_at(&p[1..], &s[1..]),
            _ => false,
        },
        Some(&c) => s.first() == Some(&c) && glob_at(&p[1..], &s[1..]),
    }
}

fn class_end(p: &[char]) -> Option<usize> {
    let start = if p.get(1) == Some(&'!') { 2 } else { 1 };
    p.iter()
        .skip(start + 1)
        .position(|&c| c == ']')
        .map(|i| i + start + 1)
}

fn class_has(class: &[char], c: char) -> bool {
    let (negate, class) = match class.first() {
        Some('!') => (true, &class[1..]),
        _ => (false, class),
    };
    let mut found = false;
    let mut i = 0;
    while i < class.len() {
        if i + 2 < class.len() && class[i + 1] == '-' {
            found |= class[i] <= c && c <= class[i + 2];
            i += 3;
        } else {
            found |= class[i] == c;
            i += 1;
        }
    }
    found != negate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "data/train_sft-*",
            "data/train_sft-00000-of-00003.parquet"
        ));
        assert!(!glob_match(
            "data/train_sft-*",
            "data/test_sft-00000-of-00001.parquet"
        ));
        assert!(!glob_match("*.json", "sub/a.json"));
        assert!(glob_match("**/*.json", "a.json"));
        assert!(glob_match("**/*.json", "x/y/a.json"));
        assert!(glob_match("data/[0-9][0-9].txt", "data/07.txt"));
        assert!(!glob_match("data/[!0-9]x", "data/1x"));
    }

    #[test]
    fn default_patterns_like_datasets() {
        let sharded = names(&[
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
        ]);
        let files = select_files(&sharded, None, Some("test"), None, "d").unwrap();
        assert_eq!(files, ["data/test-00000-of-00001.parquet"]);
        let by_name = names(&["train.jsonl", "my_validation.jsonl", "notes.txt"]);
        assert_eq!(
            select_files(&by_name, None, None, None, "d").unwrap(),
            ["train.jsonl"]
        );
        assert_eq!(
            select_files(&by_name, None, Some("validation"), None, "d").unwrap(),
            ["my_validation.jsonl"]
        );
        let by_dir = names(&["train/a.txt", "train/b.txt", "test/c.txt"]);
        assert_eq!(
            select_files(&by_dir, None, None, None, "d").unwrap(),
            ["train/a.txt", "train/b.txt"]
        );
        let plain = names(&["a.jsonl", "b.jsonl"]);
        assert_eq!(
            select_files(&plain, None, None, None, "d").unwrap(),
            ["a.jsonl", "b.jsonl"]
        );
        let err = select_files(&plain, None, Some("test"), None, "d")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no split 'test'; its splits are: train"),
            "{err}"
        );
        let export = names(&["en/train/0000.parquet", "fr/train/0000.parquet"]);
        assert_eq!(
            select_files(&export, None, None, Some("fr"), "d").unwrap(),
            ["fr/train/0000.parquet"]
        );
    }

    #[test]
    fn readme_configs_pick_the_split() {
        let readme = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train_sft\n    \
                      path: data/train_sft-*\n  - split: test_sft\n    path: data/test_sft-*\n---\n# card\n";
        let listing = names(&[
            "README.md",
            "data/train_sft-00000-of-00001.parquet",
            "data/test_sft-00000-of-00001.parquet",
        ]);
        let files = select_files(&listing, Some(readme), Some("train_sft"), None, "u").unwrap();
        assert_eq!(files, ["data/train_sft-00000-of-00001.parquet"]);
        let err = select_files(&listing, Some(readme), Some("x"), Some("other"), "u").unwrap_err();
        assert!(
            err.to_string()
                .contains("no configuration 'other'; its configurations are: default"),
            "{err}"
        );
    }
}
