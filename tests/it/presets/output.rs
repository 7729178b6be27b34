//! `qforge quantize` with every preset of issue 8 on the scheme fixtures: each of the 13
//! (fixture, preset) outputs llm-compressor wrote is reproduced byte for byte
//! (model.safetensors, config.json, recipe.yaml), and the 3 pairs it refuses are refused.

use crate::support;

use qforge::quantize::{quantize, QuantizeJob};
use std::path::PathBuf;

fn schemes() -> PathBuf {
    support::shared().join("fixtures/schemes")
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
        for (preset, recipe_file) in support::PRESET_RECIPES {
            let golden = schemes().join(format!("{fixture}-{preset}"));
            if !golden.exists() {
                continue;
            }
            let out = tmp.path().join(format!("{fixture}-{preset}"));
            let job = QuantizeJob::new(
                schemes().join(format!("{fixture}-bf16")),
                support::recipe(recipe_file),
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
        let job = QuantizeJob::new(
            schemes().join("unaligned-bf16"),
            support::recipe(&file),
            &out,
        );
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
