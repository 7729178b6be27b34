//! Helpers shared by the `verify_*` tests: fixture paths, the SmolLM2 directory, options.
#![allow(dead_code)]

use qforge::runtime::verify::{Output, VerifyOptions};
use std::path::{Path, PathBuf};

#[path = "../common/mod.rs"]
mod common;

/// The prompt of the goldens and of the issue.
pub const PROMPT: &str = "What is the capital of France?";
/// SmolLM2's greedy answer to [`PROMPT`] (fixtures/README.md §6.4).
pub const ANSWER: &str = "The capital of France is Paris.";

/// `shared/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    common::shared().join("fixtures").join(name)
}

/// `QFORGE_SMOLLM2` (the BF16 SmolLM2 directory), or `None` after printing the skip notice.
pub fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("QFORGE_SMOLLM2") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("skipped: set QFORGE_SMOLLM2");
            None
        }
    }
}

/// Greedy, silent verify options for `model` on [`PROMPT`].
pub fn silent(model: &Path, max_new_tokens: usize) -> VerifyOptions {
    VerifyOptions {
        max_new_tokens,
        output: Output::Silent,
        ..VerifyOptions::new(model.to_string_lossy(), PROMPT)
    }
}

/// A copy of fixture `name` in `dst` (created): every file copied, except `model.safetensors`
/// (symlinked) and the files in `skip`.
pub fn copy_fixture(name: &str, dst: &Path, skip: &[&str]) -> PathBuf {
    let src = fixture(name);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let file = e.file_name();
        if skip.iter().any(|s| file == *s) {
            continue;
        }
        if file == "model.safetensors" {
            std::os::unix::fs::symlink(e.path(), dst.join(&file)).unwrap();
        } else {
            std::fs::copy(e.path(), dst.join(&file)).unwrap();
        }
    }
    dst.to_path_buf()
}
