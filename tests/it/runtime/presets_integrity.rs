//! The integrity check on every preset's tensors: corrupted copies of fixtures/schemes outputs
//! (missing zero points, wrong dtype, shape or `weight_shape`, zero scales) are refused with
//! one line naming the tensor.

use crate::support::{fixture, rewrite, Entry};
use qforge::runtime::cpu::load_cpu;
use safetensors::Dtype;

/// Loads a copy of `schemes/<src>` edited by `edit`; returns the load error's message.
fn load_err(src: &str, edit: impl FnOnce(&mut Vec<Entry>)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    rewrite(&fixture(&format!("schemes/{src}")), &dir, edit, |_| {});
    match load_cpu(&dir) {
        Ok(_) => panic!("{src}: the corrupted checkpoint loaded"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
    }
}

fn tensor<'a>(entries: &'a mut [Entry], name: &str) -> &'a mut Entry {
    entries.iter_mut().find(|e| e.name == name).unwrap()
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should mention `{p}`");
    }
}

const DOWN: &str = "model.layers.0.mlp.down_proj";

#[test]
fn unedited_copies_load() {
    for p in [
        "FP8_BLOCK",
        "W8A8",
        "W8A16",
        "W4A16_ASYM",
        "NVFP4A16",
        "MXFP4A16",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        rewrite(&fixture(&format!("schemes/g128-{p}")), &dir, |_| {}, |_| {});
        load_cpu(&dir).unwrap();
    }
}

#[test]
fn missing_zero_point() {
    let name = format!("{DOWN}.weight_zero_point");
    let e = load_err("g128-W4A16_ASYM", |t| t.retain(|e| e.name != name));
    assert_mentions(&e, &[&name, "missing"]);
}

#[test]
fn wrong_dtypes() {
    let cases = [
        ("g128-W8A8", "weight", Dtype::F8_E4M3, "I8"),
        ("g128-W4A16", "weight_packed", Dtype::U32, "I32"),
        ("g128-NVFP4A16", "weight_scale", Dtype::U8, "F8_E4M3"),
        ("g128-MXFP4A16", "weight_scale", Dtype::I8, "U8"),
    ];
    for (src, suffix, dtype, want) in cases {
        let name = format!("{DOWN}.{suffix}");
        let e = load_err(src, |t| tensor(t, &name).dtype = dtype);
        assert_mentions(&e, &[&name, want]);
    }
}

#[test]
fn wrong_shapes() {
    let name = format!("{DOWN}.weight_packed");
    let e = load_err("g128-W8A16", |t| {
        let w = tensor(t, &name);
        w.shape = vec![96, 128];
    });
    assert_mentions(&e, &[&name, "[96, 128]", "[128, 96]"]);
    let name = format!("{DOWN}.weight_shape");
    let e = load_err("g128-W4A16", |t| {
        tensor(t, &name).data[..8].copy_from_slice(&129i64.to_le_bytes())
    });
    assert_mentions(&e, &[&name, "[129, 384]", "[128, 384]"]);
}

#[test]
fn zero_block_scale() {
    let name = format!("{DOWN}.weight_scale");
    let e = load_err("g128-FP8_BLOCK", |t| tensor(t, &name).data[2..4].fill(0));
    assert_mentions(&e, &[&name, "finite and > 0"]);
}
