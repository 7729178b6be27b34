//! Helpers shared by the integration tests (append only).
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared reference data folder: `$QFORGE_SHARED`, else `../shared` next to the crate.
pub fn shared() -> PathBuf {
    std::env::var_os("QFORGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

/// A recipe shipped in `recipes/`, by file name.
pub fn recipe(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes")).join(name)
}

/// Every preset qforge writes, with its shipped recipe.
pub const PRESET_RECIPES: &[(&str, &str)] = &[
    ("FP8_DYNAMIC", "fp8_dynamic.yaml"),
    ("FP8_BLOCK", "fp8_block.yaml"),
    ("W8A8", "w8a8.yaml"),
    ("W8A16", "w8a16.yaml"),
    ("W4A16", "w4a16.yaml"),
    ("W4A16_ASYM", "w4a16_asym.yaml"),
    ("NVFP4A16", "nvfp4a16.yaml"),
    ("MXFP4A16", "mxfp4a16.yaml"),
];

/// The bundled default model (`fixtures/tiny-random-llama`).
pub fn bundled_model() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/tiny-random-llama"
    ))
}

/// The bundled model quantized by the binary with `recipes/<preset>.yaml` into `dir/<preset>`.
pub fn quantize_bundled(dir: &std::path::Path, preset: &str) -> PathBuf {
    let q = dir.join(preset);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qforge"))
        .arg("quantize")
        .arg("--model")
        .arg(bundled_model())
        .arg("--recipe")
        .arg(recipe(&format!("{preset}.yaml")))
        .arg("--output")
        .arg(&q)
        .output()
        .expect("run qforge quantize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    q
}
