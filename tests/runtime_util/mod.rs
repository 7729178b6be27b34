//! Helpers shared by the runtime tests: golden files, fixture paths, comparisons.
#![allow(dead_code)]

use qforge::numerics::e4m3_to_f32;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[path = "../common/mod.rs"]
mod common;

/// `shared/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    common::shared().join("fixtures").join(name)
}

/// A golden tensor decoded to f64 values (F32, I64 and F8_E4M3 files only) with its shape.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

/// Every tensor of `shared/fixtures/golden/<file>`.
pub fn golden(file: &str) -> HashMap<String, Tensor> {
    let path = fixture("golden").join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (f32s, i64s) = match view.dtype() {
            Dtype::F32 => (
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Vec::new(),
            ),
            Dtype::F8_E4M3 => (data.iter().map(|&c| e4m3_to_f32(c)).collect(), Vec::new()),
            Dtype::I64 => (
                Vec::new(),
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            other => panic!("{file}: {name}: unexpected dtype {other:?}"),
        };
        out.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                f32: f32s,
                i64: i64s,
            },
        );
    }
    out
}

/// The golden prompt ids of a golden file.
pub fn input_ids(g: &HashMap<String, Tensor>) -> Vec<u32> {
    g["input_ids"].i64.iter().map(|&v| v as u32).collect()
}

/// Largest |a - b| over entries finite in both; panics if finiteness differs anywhere.
pub fn max_abs_diff(what: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let mut m = 0.0f32;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.is_finite(), y.is_finite(), "{what}[{i}]: {x} vs {y}");
        if x.is_finite() {
            m = m.max((x - y).abs());
        }
    }
    m
}

/// Index of the largest value (first on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

/// `QFORGE_SMOLLM2` (the BF16 SmolLM2 directory), or `None` after printing the skip notice.
pub fn smollm2_dir() -> Option<PathBuf> {
    match std::env::var_os("QFORGE_SMOLLM2") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("skipped: set QFORGE_SMOLLM2");
            None
        }
    }
}

/// Copies every regular file of `src` into `dst` (which must exist).
pub fn copy_dir(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// The FP8_DYNAMIC SmolLM2 checkpoint: `QFORGE_SMOLLM2_FP8` when set and present; otherwise
/// quantized here from the BF16 one (`bf16`) with `qforge::numerics`'s llm-compressor-exact
/// per-channel quantizer, into `QFORGE_SMOLLM2_FP8` when set (so later runs reuse it) or into
/// `tmp`. Returns the directory.
pub fn smollm2_fp8(bf16: &Path, tmp: &Path) -> PathBuf {
    let out = std::env::var_os("QFORGE_SMOLLM2_FP8")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.join("smollm2-fp8-dynamic"));
    if out.join("model.safetensors").is_file() {
        return out;
    }
    std::fs::create_dir_all(&out).unwrap();
    quantize_fp8_dynamic(bf16, &out);
    // fixtures/README.md: llm-compressor's own output for SmolLM2 has this SHA-256, so the
    // runtime is tested on exactly the checkpoint the goldens were made from.
    let sha = sha256_file(&out.join("model.safetensors"));
    assert_eq!(
        sha, "6490f92a453adcdae9d18d4b07b11f593550efdeac64e610485f435cefa7d6c2",
        "the in-test FP8 SmolLM2 is not byte-identical to llm-compressor's"
    );
    out
}

/// What llm-compressor's FP8_DYNAMIC writes for a BF16 Llama: every q/k/v/o/gate/up/down
/// weight as F8_E4M3 codes plus a BF16 `weight_scale` `[rows, 1]`, everything else copied;
/// config.json gets the fixtures' `quantization_config`.
pub fn quantize_fp8_dynamic(src: &Path, dst: &Path) {
    use qforge::checkpoint::{Checkpoint, DType};
    use qforge::numerics::{quantize_fp8_channel, Fp8Rounding};
    use safetensors::tensor::TensorView;
    const LINEARS: [&str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let ck = Checkpoint::open(src).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut copied: Vec<(String, Dtype, Vec<usize>, &[u8])> = Vec::new();
    for t in ck.tensors() {
        let quantized = t.name.starts_with("model.layers.")
            && LINEARS
                .iter()
                .any(|l| t.name.ends_with(&format!(".{l}.weight")));
        assert_eq!(t.dtype, DType::BF16, "{}", t.name);
        if quantized {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let (codes, scales) =
                quantize_fp8_channel(&t.name, t.dtype, ck.data(t), rows, cols, Fp8Rounding::Eager)
                    .unwrap();
            owned.push((t.name.clone(), Dtype::F8_E4M3, t.shape.clone(), codes));
            owned.push((
                format!("{}_scale", t.name),
                Dtype::BF16,
                vec![rows, 1],
                scales,
            ));
        } else {
            copied.push((t.name.clone(), Dtype::BF16, t.shape.clone(), ck.data(t)));
        }
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .chain(
            copied
                .iter()
                .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())),
        );
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &dst.join("model.safetensors")).unwrap();
    let q_src = fixture("tiny-tied-fp8-dynamic/config.json");
    let q: serde_json::Value = serde_json::from_slice(&std::fs::read(q_src).unwrap()).unwrap();
    let mut cfg = ck.config.clone();
    cfg["quantization_config"] = q["quantization_config"].clone();
    std::fs::write(
        dst.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One tensor of a checkpoint being rewritten.
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Copies the single-file checkpoint `src` into `dst` (created), passing its tensors through
/// `edit` (which may change, drop or add entries) and its config.json through `config`.
pub fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<Entry>),
    config: impl FnOnce(&mut serde_json::Value),
) {
    use safetensors::tensor::TensorView;
    std::fs::create_dir_all(dst).unwrap();
    copy_dir(src, dst);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Entry {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    edit(&mut entries);
    let views = entries.iter().map(|e| {
        (
            e.name.clone(),
            TensorView::new(e.dtype, e.shape.clone(), &e.data).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    let path = dst.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}
