//! The integrity check that runs before a model is used: corrupted copies of the tiny FP8
//! fixture (missing tensor, wrong shape, wrong dtype, non-finite or zero scale, NaN codes) and
//! unsupported configs are refused with one clear line naming the tensor or key.

use crate::support::{fixture, rewrite, Entry};
use qforge::runtime::cpu::load_cpu;
use qforge::Error;
use safetensors::Dtype;

const SRC: &str = "tiny-llama3-fp8-dynamic";

/// Loads a copy of the FP8 fixture edited by `edit` / `config`; returns the load error.
fn load_err(
    edit: impl FnOnce(&mut Vec<Entry>),
    config: impl FnOnce(&mut serde_json::Value),
) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    rewrite(&fixture(SRC), &dir, edit, config);
    match load_cpu(&dir) {
        Ok(_) => panic!("the corrupted checkpoint loaded"),
        Err(e) => e,
    }
}

fn tensor<'a>(entries: &'a mut [Entry], name: &str) -> &'a mut Entry {
    entries.iter_mut().find(|e| e.name == name).unwrap()
}

fn assert_mentions(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should mention `{p}`");
    }
}

#[test]
fn unedited_copy_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    rewrite(&fixture(SRC), &dir, |_| {}, |_| {});
    load_cpu(&dir).unwrap();
}

#[test]
fn missing_tensor() {
    let name = "model.layers.1.mlp.gate_proj.weight_scale";
    let e = load_err(|t| t.retain(|e| e.name != name), |_| {});
    eprintln!("{e}");
    assert!(matches!(e, Error::Checkpoint(_)), "{e:?}");
    assert_mentions(&e, &[name, "missing"]);
}

#[test]
fn missing_norm() {
    let name = "model.layers.0.post_attention_layernorm.weight";
    let e = load_err(|t| t.retain(|e| e.name != name), |_| {});
    assert_mentions(&e, &[name, "missing"]);
}

#[test]
fn wrong_shape() {
    let name = "model.layers.0.self_attn.k_proj.weight";
    let e = load_err(
        |t| {
            let w = tensor(t, name);
            w.shape = vec![w.shape[0] - 1, w.shape[1]];
            let keep = w.shape[0] * w.shape[1];
            w.data.truncate(keep);
        },
        |_| {},
    );
    assert_mentions(&e, &[name, "shape"]);
}

#[test]
fn dequantized_weight_where_fp8_expected() {
    let name = "model.layers.0.mlp.up_proj.weight";
    let e = load_err(
        |t| {
            let w = tensor(t, name);
            w.dtype = Dtype::BF16;
            w.data = w.data.iter().flat_map(|_| [0u8, 0u8]).collect();
        },
        |_| {},
    );
    assert_mentions(&e, &[name, "BF16", "F8_E4M3"]);
}

/// Scales must be finite and > 0: inf, NaN, 0 and a negative value are each refused.
#[test]
fn bad_scales() {
    let name = "model.layers.1.self_attn.v_proj.weight_scale";
    for (bits, what) in [
        (0x7F80u16, "inf"),
        (0x7FC0, "NaN"),
        (0x0000, "0"),
        (0xBC00, "-0.0078125"),
    ] {
        let e = load_err(
            |t| tensor(t, name).data[4..6].copy_from_slice(&bits.to_le_bytes()),
            |_| {},
        );
        eprintln!("{e}");
        assert_mentions(&e, &[name, "row 2", what, "finite and > 0"]);
    }
}

#[test]
fn nan_code() {
    let name = "model.layers.0.mlp.down_proj.weight";
    let e = load_err(|t| tensor(t, name).data[10] = 0xFF, |_| {});
    assert_mentions(&e, &[name, "NaN"]);
}

#[test]
fn unsupported_architecture() {
    let e = load_err(
        |_| {},
        |c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]),
    );
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert_mentions(&e, &["GPT2LMHeadModel"]);
}

#[test]
fn unsupported_quantization_scheme() {
    let e = load_err(
        |_| {},
        |c| {
            c["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] =
                "group".into()
        },
    );
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert_mentions(&e, &["weights.strategy", "group"]);
}

/// A BF16 config with FP8 tensors (quantization_config removed) is inconsistent.
#[test]
fn fp8_tensors_without_quantization_config() {
    let e = load_err(
        |_| {},
        |c| {
            c.as_object_mut().unwrap().remove("quantization_config");
        },
    );
    assert_mentions(&e, &["F8_E4M3", "expected BF16, F16 or F32"]);
}

/// Untied config without lm_head.weight.
#[test]
fn missing_lm_head() {
    let e = load_err(|t| t.retain(|e| e.name != "lm_head.weight"), |_| {});
    assert_mentions(&e, &["lm_head.weight", "missing"]);
}
