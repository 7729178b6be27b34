//! `qforge verify` refuses a config.json that is malformed or contradicts the weights with one
//! line naming the key, before allocating anything by its sizes (issue #20 items 2 and 6).

use crate::support;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The bundled model in `dst` with `key` of its config.json set to `value`.
fn model_with(dst: &Path, key: &str, value: Value) {
    std::fs::create_dir_all(dst).unwrap();
    for f in std::fs::read_dir(support::bundled_model()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    let path = dst.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// `qforge verify` on the bundled model with `key` = `value` fails with exit code 1 and one
/// error line naming `culprit`.
fn refused(key: &str, value: Value, culprit: &str) {
    let tmp = tempfile::tempdir().unwrap();
    model_with(tmp.path(), key, value.clone());
    let start = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_qforge"))
        .args(["verify", "--device", "cpu", "--max-new-tokens", "2"])
        .args(["--prompt", "Hi", "--model"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let what = format!("{key} = {value}");
    assert_eq!(run.status.code(), Some(1), "{what}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("qforge verify: device"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one line expected: {stderr}");
    assert!(errors[0].contains(culprit), "{what}: {stderr}");
    assert!(start.elapsed() < Duration::from_secs(20), "{what}: slow");
}

#[test]
fn sizes_beyond_the_weights_are_refused_before_allocating() {
    refused(
        "num_hidden_layers",
        2147483648u64.into(),
        "num_hidden_layers",
    );
    refused("num_hidden_layers", 1_000_000.into(), "num_hidden_layers");
    refused("num_hidden_layers", 3.into(), "num_hidden_layers");
    refused("hidden_size", 96.into(), "model.embed_tokens.weight");
}

#[test]
fn malformed_keys_are_refused_by_name() {
    refused("rope_scaling", "x".into(), "rope_scaling");
    refused(
        "rope_scaling",
        serde_json::json!({"rope_type": 7}),
        "rope_type",
    );
    refused("rms_norm_eps", (-1).into(), "rms_norm_eps");
    refused("rms_norm_eps", 0.into(), "rms_norm_eps");
    refused("architectures", serde_json::json!([]), "architectures");
    refused("architectures", Value::Null, "architectures");
    refused("architectures", serde_json::json!([123]), "architectures");
    refused("hidden_act", 5.into(), "hidden_act");
    refused("hidden_act", Value::Null, "hidden_act");
}
