//! The integration tests' helpers, each written once: where the shared fixtures, recipes
//! and bundled model are, the qforge binary, the requirement checks (`#[requires(..)]`, see
//! tests/requires), and quantizing test models. `runtime`, `verify`, `cuda` and `nvrtc` hold
//! the helpers of those areas; the first two are re-exported here.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod runtime;
pub mod verify;

pub use qforge_requires::{met, requires};
pub use runtime::*;
pub use verify::*;

use std::path::PathBuf;
use std::process::Command;

/// The shared reference data folder: `$QFORGE_SHARED`, else `../shared` next to the crate.
pub fn shared() -> PathBuf {
    std::env::var_os("QFORGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

/// `shared/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    shared().join("fixtures").join(name)
}

/// The qforge binary of this build, ready for arguments.
pub fn qforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
}

/// The BF16 SmolLM2 folder, `$QFORGE_SMOLLM2`: only for tests marked
/// `#[requires(smollm2)]`, which are ignored when the tests were built without it.
pub fn smollm2() -> PathBuf {
    let dir = std::env::var_os("QFORGE_SMOLLM2")
        .filter(|v| !v.is_empty() && v != "skip")
        .expect("QFORGE_SMOLLM2 was set when the tests were built, but is not now: rebuild them");
    PathBuf::from(dir)
}

/// The small filesystem (a few MB) named by `$QFORGE_SMALL_FS` for the disk-full tests
/// (.ci/run mounts a 3 MB tmpfs): only for tests marked `#[requires(small_fs)]`.
pub fn small_fs() -> PathBuf {
    let dir = std::env::var_os("QFORGE_SMALL_FS")
        .filter(|v| !v.is_empty())
        .expect("QFORGE_SMALL_FS was set when the tests were built, but is not now: rebuild them");
    PathBuf::from(dir)
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
    quantize(&bundled_model(), preset, &dir.join(preset))
}

/// `qforge quantize --model model --recipe recipes/<preset>.yaml --output out`, which must
/// succeed; returns `out`.
pub fn quantize(model: &std::path::Path, preset: &str, out: &std::path::Path) -> PathBuf {
    let run = qforge()
        .arg("quantize")
        .arg("--model")
        .arg(model)
        .arg("--recipe")
        .arg(recipe(&format!("{preset}.yaml")))
        .arg("--output")
        .arg(out)
        .output()
        .expect("run qforge quantize");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out.to_path_buf()
}

/// Multiplies every Linear weight `[r, c]` of a BF16 safetensors file by
/// `[1, 0.4, 0.7][(c/128 + r/128) % 3] · [0.5, 1, 1.5, 2, 3][(c/16 + r/8) % 5]`, so that
/// 128×128 block, group and row scales differ (the synthetic values are uniform: every block
/// would get the same BF16 scale).
pub fn vary_magnitudes(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for (name, t) in header.as_object().unwrap() {
        if !name.ends_with("_proj.weight") {
            continue;
        }
        assert_eq!(t["dtype"], "BF16");
        let cols = t["shape"][1].as_u64().unwrap() as usize;
        let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
        let end = 8 + n + t["data_offsets"][1].as_u64().unwrap() as usize;
        for (i, pair) in bytes[start..end].chunks_exact_mut(2).enumerate() {
            let (r, c) = (i / cols, i % cols);
            let f = [1.0, 0.4, 0.7][(c / 128 + r / 128) % 3]
                * [0.5, 1.0, 1.5, 2.0, 3.0][(c / 16 + r / 8) % 5];
            let v = half::bf16::from_le_bytes([pair[0], pair[1]]).to_f32() * f;
            pair.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A random BF16 model of `shape` (seed 7, written once per `dir`, magnitudes varied by
/// [`vary_magnitudes`]) quantized by the binary with `recipes/<preset>.yaml` into
/// `dir/<preset>-<hidden>`.
pub fn quantize_random(
    dir: &std::path::Path,
    shape: &qforge::synthetic::LlamaShape,
    preset: &str,
) -> PathBuf {
    let src = dir.join(format!("bf16-{}", shape.hidden));
    if !src.exists() {
        qforge::synthetic::write_checkpoint(shape, &src, 7, 1 << 30).unwrap();
        vary_magnitudes(&src.join("model.safetensors"));
    }
    quantize(
        &src,
        preset,
        &dir.join(format!("{preset}-{}", shape.hidden)),
    )
}

/// Copies every file of the model folder `src` into `dst` (created), and returns `dst`.
pub fn copy_model(src: &std::path::Path, dst: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
    }
    dst.to_path_buf()
}

/// Rewrites `dir/model.safetensors` with what `edit` returns for each tensor and its bytes
/// (a tensor may be renamed, reshaped or changed; `None` drops it).
pub fn rewrite_tensors(
    dir: &std::path::Path,
    edit: impl Fn(
        qforge::checkpoint::writer::OutTensor,
        Vec<u8>,
    ) -> Option<(qforge::checkpoint::writer::OutTensor, Vec<u8>)>,
) {
    use qforge::checkpoint::writer::{self, OutTensor, ShardWriter};
    let path = dir.join("model.safetensors");
    let (tensors, datas): (Vec<OutTensor>, Vec<Vec<u8>>) = {
        let ck = qforge::checkpoint::Checkpoint::open(dir).unwrap();
        ck.tensors()
            .iter()
            .filter_map(|t| {
                let out = OutTensor::new(t.name.clone(), t.dtype, t.shape.clone());
                edit(out, ck.data(t).to_vec())
            })
            .unzip()
    };
    std::fs::remove_file(&path).unwrap();
    let shard = writer::plan_shards(&tensors, u64::MAX).remove(0);
    let w = ShardWriter::create(&path, &shard).unwrap();
    for (t, d) in tensors.iter().zip(&datas) {
        w.write_tensor(&t.name, d).unwrap();
    }
    w.finish().unwrap();
}
