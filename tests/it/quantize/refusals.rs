//! `qforge quantize` refuses, before writing anything, a model whose config.json contradicts
//! its weights (a checkpoint its own `verify` could not load), bounds `--threads`, and leaves
//! nothing behind after a successful `--force` (issue #20 items 2, 4b, 5, 7).

use crate::support;
use qforge::checkpoint::writer::OutTensor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A copy of the bundled model (all files) in `dst`.
fn copy_model(dst: &Path) -> PathBuf {
    support::copy_model(&support::bundled_model(), dst)
}

/// Applies `edit` to `dir/config.json`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Rewrites `dir/model.safetensors` with the tensors `keep` returns (a tensor may be renamed
/// or reshaped; `None` drops it).
fn edit_tensors(dir: &Path, keep: impl Fn(OutTensor) -> Option<OutTensor>) {
    support::rewrite_tensors(dir, |t, data| keep(t).map(|t| (t, data)));
}

fn quantize(model: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
        .arg("quantize")
        .args(extra)
        .arg("--model")
        .arg(model)
        .arg("--recipe")
        .arg(support::recipe("fp8_dynamic.yaml"))
        .arg("--output")
        .arg(out)
        .output()
        .unwrap()
}

/// Quantizes the model in `tmp/model` into `tmp/out/q`, which must fail with exit code 1
/// and one error line naming `culprit`, leaving the output's folder empty.
fn refused(tmp: &Path, culprit: &str) {
    let parent = tmp.join("out");
    std::fs::create_dir_all(&parent).unwrap();
    let run = quantize(&tmp.join("model"), &parent.join("q"), &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{culprit}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].contains(culprit), "{culprit} not named: {stderr}");
    let left: Vec<_> = std::fs::read_dir(&parent).unwrap().collect();
    assert!(left.is_empty(), "{culprit}: left {left:?}");
}

#[test]
fn config_sizes_are_checked_against_the_weights() {
    let cases: &[(&str, Value, &str)] = &[
        (
            "num_hidden_layers",
            2147483648u64.into(),
            "num_hidden_layers",
        ),
        ("num_hidden_layers", 1_000_000.into(), "num_hidden_layers"),
        ("hidden_size", 96.into(), "model.embed_tokens.weight"),
        ("num_attention_heads", 7.into(), "q_proj.weight"),
        ("num_key_value_heads", 0.into(), "num_key_value_heads"),
        ("vocab_size", (-1).into(), "vocab_size"),
        ("intermediate_size", 64.into(), "gate_proj.weight"),
    ];
    for (key, value, culprit) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let model = copy_model(&tmp.path().join("model"));
        edit_config(&model, |v| v[*key] = value.clone());
        let start = Instant::now();
        refused(tmp.path(), culprit);
        assert!(start.elapsed() < Duration::from_secs(20), "{key}: slow");
    }
}

#[test]
fn a_three_d_linear_weight_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(&tmp.path().join("model"));
    edit_tensors(&model, |mut t| {
        if t.name == "model.layers.1.mlp.up_proj.weight" {
            t.shape.insert(0, 1);
        }
        Some(t)
    });
    refused(tmp.path(), "model.layers.1.mlp.up_proj.weight");
}

#[test]
fn a_missing_layer_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(&tmp.path().join("model"));
    edit_tensors(&model, |t| {
        (t.name != "model.layers.1.self_attn.k_proj.weight").then_some(t)
    });
    refused(tmp.path(), "model.layers.1.self_attn.k_proj.weight");
}

#[test]
fn a_checkpoint_without_tensors_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(&tmp.path().join("model"));
    // A valid safetensors file that holds no tensor: an 8-byte length, then `{}`.
    let mut bytes = 2u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(model.join("model.safetensors"), bytes).unwrap();
    refused(tmp.path(), "holds no tensors");
}

#[test]
fn threads_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let run = quantize(
        &support::bundled_model(),
        &tmp.path().join("q"),
        &["--threads", "100000"],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--threads 100000"), "{stderr}");
    assert!(stderr.contains("at most"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(!tmp.path().join("q").exists());
}

#[test]
fn force_over_a_file_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q");
    std::fs::write(&out, b"an old file").unwrap();
    let run = quantize(&support::bundled_model(), &out, &["--force"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("config.json").is_file());
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["q"]);
}
