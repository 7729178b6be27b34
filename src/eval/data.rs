//! Task documents from a local folder (`--data-dir`) laid out like the Hub datasets lm_eval
//! reads: `DIR/<dataset repo id>/<config>/<split>.jsonl` (one JSON object per line, the
//! dataset's own fields; `<config>` is `default` for datasets without one), e.g.
//! `DIR/allenai/ai2_arc/ARC-Challenge/test.jsonl`.

use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where a task's documents come from: lm_eval's `dataset_path` and `dataset_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetId<'a> {
    pub path: &'a str,
    pub name: Option<&'a str>,
}

impl DatasetId<'_> {
    /// The split's file under `dir`.
    pub fn file(&self, dir: &Path, split: &str) -> PathBuf {
        dir.join(self.path)
            .join(self.name.unwrap_or("default"))
            .join(format!("{split}.jsonl"))
    }
}

/// Reads one split; a missing file is an error that names the file it looked for.
pub fn load_split(dir: Option<&Path>, id: DatasetId, split: &str) -> Result<Vec<Value>> {
    let Some(dir) = dir else {
        return Err(Error::Dataset(format!(
            "{}{}: no --data-dir given, and qforge does not download datasets yet: put {split}.jsonl under DIR/{}/{}/",
            id.path,
            id.name.map(|n| format!(" ({n})")).unwrap_or_default(),
            id.path,
            id.name.unwrap_or("default"),
        )));
    };
    let file = id.file(dir, split);
    let text = match crate::checkpoint::input::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Dataset(format!(
                "{}: not found (the {split} split of {}{} in --data-dir)",
                file.display(),
                id.path,
                id.name.map(|n| format!(" {n}")).unwrap_or_default()
            )))
        }
        Err(e) => return Err(Error::io(&file, e)),
    };
    parse_jsonl(&text).map_err(|e| Error::Dataset(format!("{}: {e}", file.display())))
}

/// One JSON object per non-empty line.
pub fn parse_jsonl(text: &str) -> std::result::Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let doc: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: invalid JSON: {e}", i + 1))?;
        if !doc.is_object() {
            return Err(format!("line {}: expected a JSON object", i + 1));
        }
        docs.push(doc);
    }
    Ok(docs)
}
