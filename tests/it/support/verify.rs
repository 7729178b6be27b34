//! Helpers of the verify tests: the golden prompt and answer, options, fixture copies.

use qforge::runtime::verify::{Output, VerifyOptions};
use std::path::{Path, PathBuf};

use super::fixture;

/// The prompt of the goldens and of the issue.
pub const PROMPT: &str = "What is the capital of France?";
/// SmolLM2's greedy answer to [`PROMPT`] (fixtures/README.md §6.4).
pub const ANSWER: &str = "The capital of France is Paris.";

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
