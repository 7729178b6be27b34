//! Input files that are FIFOs (or directories) are refused with a one-line error instead of
//! blocking forever in `open` (issue #20): config.json, tokenizer files, chat template, recipe.
//! The checkpoint reader's own cases (config, shard, index) are in checkpoint_reader.rs.

use qforge::recipe::Recipe;
use qforge::runtime::chat::ChatTemplate;
use qforge::runtime::config::ModelConfig;
use qforge::runtime::tokenizer::TextTokenizer;
use std::fs;
use std::path::{Path, PathBuf};

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A copy of the bundled model's small files (no weights) in a temp dir.
fn model_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        fs::copy(crate::support::bundled_model().join(f), d.path().join(f)).unwrap();
    }
    d
}

/// Runs `load(dir)` with `file` replaced by a FIFO; returns its error, failing (instead of
/// hanging the suite) if it blocks.
fn fifo_error<T: 'static>(file: &str, load: fn(&Path) -> qforge::Result<T>) -> String {
    let d = model_copy();
    mkfifo(&d.path().join(file));
    let dir: PathBuf = d.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(load(&dir).err().map(|e| e.to_string())));
    let e = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("blocked reading the FIFO {file}"))
        .unwrap_or_else(|| panic!("a FIFO {file} was accepted"));
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains(&format!("{file}: is a FIFO, not a regular file")),
        "{e}"
    );
    e
}

#[test]
fn model_config_refuses_a_fifo() {
    fifo_error("config.json", ModelConfig::load);
}

#[test]
fn tokenizer_refuses_fifo_files() {
    fifo_error("tokenizer.json", TextTokenizer::load);
    fifo_error("tokenizer_config.json", TextTokenizer::load);
    fifo_error("generation_config.json", TextTokenizer::load);
}

#[test]
fn chat_template_refuses_fifo_files() {
    fifo_error("chat_template.jinja", ChatTemplate::load);
    fifo_error("tokenizer_config.json", ChatTemplate::load);
}

#[test]
fn recipe_refuses_a_fifo_and_a_directory() {
    fifo_error("recipe.yaml", |dir| {
        Recipe::from_file(&dir.join("recipe.yaml"))
    });
    let d = tempfile::tempdir().unwrap();
    let e = Recipe::from_file(d.path()).unwrap_err().to_string();
    assert!(e.contains("is a directory, not a regular file"), "{e}");
}
