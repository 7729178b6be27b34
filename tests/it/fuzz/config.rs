//! Mutation fuzzing of config.json readers: the runtime's `ModelConfig::load` on the
//! fixtures' configs, and the whole CPU loader (`load_cpu`: config checked against real
//! weights) on the bundled model with a mutated config. Promise: no panic; either a one-line
//! error naming the problem, or a config whose core sizes are the JSON's own numbers.

use super::util::{assert_one_line, config, mutate, mutation};
use crate::support;
use proptest::prelude::*;
use proptest::sample::Index;
use qforge::runtime::config::ModelConfig;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let f = support::shared().join("fixtures");
        [
            support::bundled_model().join("config.json"),
            f.join("tiny-llama3-bf16/config.json"),
            f.join("tiny-tied-bf16/config.json"),
            f.join("tiny-llama3-fp8-dynamic/config.json"),
            f.join("smollm2-meta/config.json"),
            // static FP8 groups and an FP8 kv_cache_scheme
            f.join("calibration/g128-fp8_static_kv/config.json"),
        ]
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect()
    })
}

/// A loaded config agrees with the JSON on the sizes it must not invent or change.
fn check_sizes(cfg: &ModelConfig, json: &[u8]) {
    let v: Value = serde_json::from_slice(json).expect("accepted config is JSON");
    for (key, got) in [
        ("hidden_size", cfg.hidden_size),
        ("num_hidden_layers", cfg.num_layers),
        ("num_attention_heads", cfg.num_heads),
        ("vocab_size", cfg.vocab_size),
    ] {
        let want = v.get(key).and_then(Value::as_u64);
        assert_eq!(want, Some(got as u64), "{key}");
    }
    assert!(cfg.hidden_size > 0 && cfg.num_heads > 0 && cfg.num_kv_heads > 0);
}

fn load_in(dir: &Path, json: &[u8]) -> qforge::Result<ModelConfig> {
    fs::write(dir.join("config.json"), json).unwrap();
    ModelConfig::load(dir)
}

proptest! {
    #![proptest_config(config(512, 1))]

    #[test]
    fn model_config_mutations_end_cleanly(seed in any::<Index>(), m in mutation()) {
        let seeds = seeds();
        let json = mutate(&seeds[seed.index(seeds.len())], &m);
        let d = tempfile::tempdir().unwrap();
        match load_in(d.path(), &json) {
            Ok(cfg) => check_sizes(&cfg, &json),
            Err(e) => assert_one_line(&e.to_string()),
        }
    }
}

proptest! {
    #![proptest_config(config(64, 4))]

    /// The config checked against the real weights: shape mismatches must be errors.
    #[test]
    fn cpu_load_with_mutated_config_ends_cleanly(m in mutation()) {
        let model = support::bundled_model();
        let json = mutate(&seeds()[0], &m);
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            model.join("model.safetensors"),
            d.path().join("model.safetensors"),
        )
        .unwrap();
        fs::write(d.path().join("config.json"), &json).unwrap();
        match qforge::runtime::cpu::load_cpu(d.path()) {
            Ok(_) => check_sizes(&ModelConfig::load(d.path()).unwrap(), &json),
            Err(e) => assert_one_line(&e.to_string()),
        }
    }
}

#[test]
fn seeds_load() {
    let d = tempfile::tempdir().unwrap();
    for s in seeds() {
        let cfg = load_in(d.path(), s).unwrap();
        check_sizes(&cfg, s);
    }
}
