//! Task documents: from the Hugging Face Hub (the dataset repos lm_eval reads, downloaded into
//! the HF cache by `checkpoint::hub`, their split's files picked and read by `dataset::files`
//! as `datasets.load_dataset(path, name, split=…)` picks them), or from a local folder
//! (`--data-dir`) laid out as `DIR/<dataset repo id>/<config>/<split>.jsonl` (one JSON object
//! per line, the dataset's own fields; `<config>` is `default` for datasets without one), e.g.
//! `DIR/allenai/ai2_arc/ARC-Challenge/test.jsonl`.

use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::checkpoint::hub::HubConfig;
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

    /// `path` or `path (name)`, for messages.
    fn describe(&self) -> String {
        match self.name {
            Some(n) => format!("{} ({n})", self.path),
            None => self.path.to_string(),
        }
    }
}

/// Where to read the documents from.
#[derive(Debug, Clone, Copy)]
pub enum DataSource<'a> {
    /// `--data-dir`: `DIR/<repo id>/<config>/<split>.jsonl`.
    Dir(&'a Path),
    /// The Hub (or its cache; offline mode reads the cache only).
    Hub(&'a HubConfig),
}

/// Reads one split; a missing file or dataset is an error that names what it looked for.
pub fn load_split(source: DataSource, id: DatasetId, split: &str) -> Result<Vec<Value>> {
    match source {
        DataSource::Dir(dir) => load_local(dir, id, split),
        DataSource::Hub(hub) => load_hub(hub, id, split),
    }
}

fn load_hub(hub: &HubConfig, id: DatasetId, split: &str) -> Result<Vec<Value>> {
    let rows =
        crate::dataset::files::load_rows_with(id.path, Some(split), id.name, hub).map_err(|e| {
            // The dataset module words its messages for `quantize --dataset`.
            let why = e.to_string().replace("--dataset ", "");
            Error::Dataset(format!("the {split} split of {}: {why}", id.describe()))
        })?;
    Ok(rows.rows.into_iter().map(Value::Object).collect())
}

fn load_local(dir: &Path, id: DatasetId, split: &str) -> Result<Vec<Value>> {
    let file = id.file(dir, split);
    let text = match crate::checkpoint::input::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Dataset(format!(
                "{}: not found (the {split} split of {} in --data-dir)",
                file.display(),
                id.describe()
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
