//! Datasets read from outside: local files (.jsonl, .json, .parquet, .txt), folders and Hugging
//! Face Hub dataset repos, turned into token ids the way llm-compressor 0.14 preprocesses them.
//! The rules, each with the Python function it follows, are in `docs/datasets.md`.
//!
//! [`table`] and [`parquet`] read files into rows and [`files`] picks a split's files in a
//! folder or Hub snapshot: reusable by any reader of outside data (calibration, eval tasks).
//! [`load_calibration`] is the calibration side: rows → token ids → the selected samples.

pub mod files;
pub mod order;
pub mod parquet;
pub mod shuffle;
pub mod source;
pub mod table;
mod tokenize;

use crate::checkpoint::hub::HubConfig;
use crate::{Error, Result};
use std::path::Path;
pub use table::Row;

/// What `--dataset` and its options ask for. Defaults are llm-compressor's
/// (`num_calibration_samples=512`) and the (`max_seq_length=2048`, seed 42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationSpec {
    /// A local file or folder, or a Hub dataset id (`HuggingFaceH4/ultrachat_200k`).
    pub source: String,
    /// The split (`train_sft`); `None` = `train`, as llm-compressor falls back to.
    pub split: Option<String>,
    /// The dataset configuration (subset) of a Hub dataset or folder.
    pub config: Option<String>,
    /// The column holding the text (llm-compressor's `text_column`, default `text`).
    pub text_column: Option<String>,
    /// How many samples to take (fewer when the dataset has fewer, with a warning).
    pub num_samples: usize,
    /// Longer samples are truncated to this many tokens.
    pub max_seq_length: usize,
    /// `Some(seed)`: the rows in `datasets.Dataset.shuffle(seed)` order, then the first
    /// `num_samples`. `None` (llm-compressor's `shuffle_calibration_samples=False`): its
    /// `LengthAwareSampler` order, longest first (equal lengths in torch's sort order).
    pub shuffle: Option<u64>,
}

/// llm-compressor's `num_calibration_samples` default.
pub const DEFAULT_NUM_SAMPLES: usize = 512;
/// The default `--max-seq-length`.
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 2048;
/// The default `--shuffle-seed` (the seed of llm-compressor's examples).
pub const DEFAULT_SHUFFLE_SEED: u64 = 42;

impl CalibrationSpec {
    /// A spec for `source` with the defaults.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            split: None,
            config: None,
            text_column: None,
            num_samples: DEFAULT_NUM_SAMPLES,
            max_seq_length: DEFAULT_MAX_SEQ_LENGTH,
            shuffle: Some(DEFAULT_SHUFFLE_SEED),
        }
    }
}

/// The calibration samples, in the order they are to be fed to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationSet {
    /// Token ids of each sample, none empty, none longer than the max sequence length.
    pub samples: Vec<Vec<u32>>,
    /// The dataset row each sample came from (0-based, in the order rows were read).
    pub rows: Vec<usize>,
    /// What the user should know (fewer samples than asked, truncation, empty rows dropped).
    pub warnings: Vec<String>,
    /// One line for the user: source, split, column, sample count and order.
    pub description: String,
}

impl CalibrationSet {
    /// Total tokens over all samples.
    pub fn num_tokens(&self) -> usize {
        self.samples.iter().map(Vec::len).sum()
    }

    /// Fails, naming the sample, its row and the id, when a token id is not below
    /// `vocab_size` (the model's embedding rows).
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        for (i, (ids, row)) in self.samples.iter().zip(&self.rows).enumerate() {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                return Err(Error::Dataset(format!(
                    "calibration sample {i} (dataset row {row}) has token id {id}, outside \
                     the model's vocabulary of {vocab_size} ids"
                )));
            }
        }
        Ok(())
    }
}

/// Loads `spec.source`, tokenizes it with the tokenizer (and chat template) in
/// `tokenizer_dir`, and selects the samples as llm-compressor 0.14 does.
pub fn load_calibration(spec: &CalibrationSpec, tokenizer_dir: &Path) -> Result<CalibrationSet> {
    load_calibration_with(spec, tokenizer_dir, &HubConfig::from_env())
}

/// [`load_calibration`] with an explicit Hub configuration instead of the process environment.
pub fn load_calibration_with(
    spec: &CalibrationSpec,
    tokenizer_dir: &Path,
    hub: &HubConfig,
) -> Result<CalibrationSet> {
    let (split, config) = (spec.split.as_deref(), spec.config.as_deref());
    let data = files::open_with(&spec.source, split, config, hub)?;
    let (total, origin) = (data.len(), data.origin.as_str());
    if total == 0 {
        return Err(Error::Dataset(format!(
            "{origin}: the dataset is empty (no rows)"
        )));
    }
    let first = data.rows_at(&[0])?;
    let names = data.column_names();
    let column =
        tokenize::choose_column(&names, first.first(), spec.text_column.as_deref(), origin)?;
    let mut warnings = Vec::new();
    let encoder =
        tokenize::Encoder::new(&column, tokenizer_dir, spec.max_seq_length, &mut warnings)?;
    let n = spec.num_samples.min(total);
    if spec.num_samples > total {
        warnings.push(format!(
            "requested {} calibration samples but {origin} has only {total}; using all {total}",
            spec.num_samples
        ));
    }
    let (picked, samples) = match spec.shuffle {
        // Only the selected rows are read (and tokenized).
        Some(seed) => {
            let picked: Vec<usize> = shuffle::permutation(seed, total)[..n].to_vec();
            let samples = encoder.encode_rows(&data.rows_at(&picked)?, &picked)?;
            (picked, samples)
        }
        // The order depends on every row's length: all are tokenized.
        None => {
            let all: Vec<usize> = (0..total).collect();
            let encoded = encoder.encode_rows(&data.all_rows()?, &all)?;
            let lengths: Vec<usize> = encoded.iter().map(|s| s.ids.len()).collect();
            let picked: Vec<usize> = order::length_aware(&lengths)[..n].to_vec();
            let mut encoded: Vec<Option<tokenize::Encoded>> =
                encoded.into_iter().map(Some).collect();
            let samples = picked
                .iter()
                .map(|&r| encoded[r].take().expect("a permutation"))
                .collect();
            (picked, samples)
        }
    };
    finish(spec, origin, &column, picked, samples, warnings)
}

/// Drops empty samples, counts truncations, and writes the description.
fn finish(
    spec: &CalibrationSpec,
    origin: &str,
    column: &tokenize::Column,
    picked: Vec<usize>,
    encoded: Vec<tokenize::Encoded>,
    mut warnings: Vec<String>,
) -> Result<CalibrationSet> {
    let truncated = encoded.iter().filter(|e| e.truncated).count();
    if truncated > 0 {
        warnings.push(format!(
            "{truncated} of {} calibration samples were longer than the maximum sequence \
             length and were truncated",
            encoded.len()
        ));
    }
    let (mut samples, mut rows, mut empty) = (Vec::new(), Vec::new(), 0);
    for (row, e) in picked.into_iter().zip(encoded) {
        if e.ids.is_empty() {
            empty += 1;
        } else {
            samples.push(e.ids);
            rows.push(row);
        }
    }
    if empty > 0 {
        warnings.push(format!(
            "{empty} selected samples had no tokens and were left out"
        ));
    }
    if samples.is_empty() {
        return Err(Error::Dataset(format!(
            "{origin}: no calibration sample has any tokens"
        )));
    }
    let order = match spec.shuffle {
        Some(seed) => format!("shuffled with seed {seed}"),
        None => "longest first (not shuffled)".to_string(),
    };
    let description = format!(
        "{} calibration samples ({} tokens) from {origin}, column '{}', {order}, at most {} \
         tokens each",
        samples.len(),
        samples.iter().map(Vec::len).sum::<usize>(),
        column.name(),
        spec.max_seq_length
    );
    Ok(CalibrationSet {
        samples,
        rows,
        warnings,
        description,
    })
}
