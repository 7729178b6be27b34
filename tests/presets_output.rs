//! `qforge quantize` with every preset of issue 8 on the scheme fixtures: each of the 13
//! (fixture, preset) outputs llm-compressor wrote is reproduced byte for byte
//! (model.safetensors, config.json, recipe.yaml), and the 3 pairs it refuses are refused.

mod common;

use qforge::quantize::{quantize, QuantizeJob};
use std::path::{Path, PathBuf};

const PRESETS: &[(&str, &str)] = &[
    ("FP8_DYNAMIC", "fp8_dynamic.yaml"),
    ("FP8_BLOCK", "fp8_block.yaml"),
    ("W8A8", "w8a8.yaml"),
    ("W8A16", "w8a16.yaml"),
    ("W4A16", "w4a16.yaml"),
    ("W4A16_ASYM", "w4a16_asym.yaml"),
    ("NVFP4A16", "nvfp4a16.yaml"),
    ("MXFP4A16", "mxfp4a16.yaml"),
];

fn schemes() -> PathBuf {
    common::shared().join("fixtures/schemes")
}

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("recipes")
        .join(name)
}

/// The first byte where two files differ, for a readable failure.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn every_golden_pair_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for fixture in ["g128", "unaligned"] {
        for (preset, recipe_file) in PRESETS {
            let golden = schemes().join(format!("{fixture}-{preset}"));
            if !golden.exists() {
                continue;
            }
            let out = tmp.path().join(format!("{fixture}-{preset}"));
            let job = QuantizeJob::new(
                schemes().join(format!("{fixture}-bf16")),
                recipe(recipe_file),
                &out,
            );
            let summary = quantize(&job).unwrap_or_else(|e| panic!("{fixture} {preset}: {e}"));
            assert_eq!(summary.quantized, 14, "{fixture} {preset}");
            for file in ["model.safetensors", "config.json", "recipe.yaml"] {
                let want = std::fs::read(golden.join(file)).unwrap();
                let have = std::fs::read(out.join(file)).unwrap();
                assert!(
                    want == have,
                    "{fixture} {preset} {file}: differs at byte {:?} ({} vs {} bytes)",
                    first_difference(&want, &have),
                    have.len(),
                    want.len()
                );
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 13);
}

#[test]
fn unaligned_group_presets_are_refused_naming_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    for preset in ["W8A16", "W4A16", "W4A16_ASYM"] {
        assert!(!schemes().join(format!("unaligned-{preset}")).exists());
        let file = format!("{}.yaml", preset.to_lowercase());
        let out = tmp.path().join(preset);
        let job = QuantizeJob::new(schemes().join("unaligned-bf16"), recipe(&file), &out);
        let err = quantize(&job).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("not a multiple of the group size"), "{err}");
        for t in [
            "model.layers.0.mlp.down_proj.weight (columns=288, group_size=128)",
            "model.layers.1.self_attn.q_proj.weight (columns=160, group_size=128)",
        ] {
            assert!(err.contains(t), "{preset}: {err}");
        }
        assert!(!err.contains("lm_head"), "{err}");
        assert!(!out.exists(), "{preset}: output written despite the error");
    }
}
