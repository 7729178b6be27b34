//! Calibration datasets (`qforge::dataset`): readers, tokenization and sample selection
//! checked against llm-compressor 0.14's own preprocessing (tests/data/calib/expected.json,
//! made by tests/data/calib/make_expected.py), and bad input. Hub dataset repos are tested in
//! `hub::dataset` (the mock hub lives there).

mod errors;
mod local;

use qforge::dataset::{load_calibration, CalibrationSet, CalibrationSpec};
use serde_json::Value;
use std::path::PathBuf;

/// `tests/data/calib/<name>`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/calib")).join(name)
}

/// SmolLM2's tokenizer and chat template (the shared fixture, no weights needed).
pub fn tokenizer() -> PathBuf {
    crate::support::fixture("smollm2-meta")
}

/// One list of the expected ids file.
pub fn expected(key: &str) -> Value {
    let text = std::fs::read_to_string(data("expected.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all[key].clone()
}

/// `expected(key)` as lists of ids.
pub fn expected_ids(key: &str) -> Vec<Vec<u32>> {
    serde_json::from_value(expected(key)).unwrap()
}

/// A spec for a file of tests/data/calib (or any path) with the given options.
pub fn spec(
    source: impl Into<String>,
    n: usize,
    max_len: usize,
    shuffle: Option<u64>,
) -> CalibrationSpec {
    CalibrationSpec {
        num_samples: n,
        max_seq_length: max_len,
        shuffle,
        ..CalibrationSpec::new(source)
    }
}

pub fn load(spec: &CalibrationSpec) -> CalibrationSet {
    load_calibration(spec, &tokenizer()).unwrap_or_else(|e| panic!("{}: {e}", spec.source))
}

pub fn load_err(spec: &CalibrationSpec) -> String {
    match load_calibration(spec, &tokenizer()) {
        Ok(set) => panic!("{} loaded: {}", spec.source, set.description),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "not one line: {msg}");
            msg
        }
    }
}
