//! SmoothQuant on the calibration pipeline against llm-compressor
//! 0.14's `g128-smoothquant_gptq_w8a8` fixture, and the bad-input refusals of issue #22.

use crate::calibrate::run_case;
use crate::support::{fixture, qforge};
use std::path::Path;

/// SmoothQuant 0.8 then GPTQ W8A8 (two stages, run as llm-compressor's `independent`
/// pipeline runs them: SmoothQuant's own pass, then GPTQ's on the smoothed model).
///
/// Exact: config.json, recipe.yaml, tensor names, every copied tensor, layer 0's smoothed
/// input_layernorm and its q/k/v codes and scales (they depend on the embeddings alone).
/// Not exact (measured 2026-12-06): the norms after an attention or MLP block differ in up
/// to 27 of 128 channels by at most 2 BF16 steps, because qforge's BF16 forward sums in
/// another order than torch and a per-channel max over 2048 tokens picks that up; the
/// codes downstream of those scales then differ in up to 16% (layer 1 q_proj).
#[test]
fn smoothquant_gptq_w8a8_reproduces_llm_compressor() {
    let diffs = run_case("g128-smoothquant_gptq_w8a8", |_| true);
    let get = |n: &str| &diffs.iter().find(|(name, _)| name == n).unwrap().1;
    for exact in [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.weight_scale",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert_eq!(get(exact).differ, 0, "{exact}: {:?}", get(exact));
    }
    for (name, d) in &diffs {
        if name.ends_with("layernorm.weight") || name.ends_with("weight_scale") {
            assert!(d.max_steps <= 4, "{name}: {d:?}");
        } else {
            // int8 codes: at least 80% identical (worst measured: 83.6%).
            assert!(d.differ * 5 <= d.elements, "{name}: {d:?}");
        }
    }
}

/// Runs `quantize --dataset` on g128-bf16 with the recipe `text`; returns (success,
/// stderr, whether the output folder exists).
fn quantize_recipe(text: &str) -> (bool, String, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("recipe.yaml");
    std::fs::write(&recipe, text).unwrap();
    let out = tmp.path().join("out");
    let run = qforge()
        .args(["quantize", "--model"])
        .arg(fixture("schemes/g128-bf16"))
        .arg("--recipe")
        .arg(&recipe)
        .arg("--dataset")
        .arg(fixture("calibration/g128-ids.json"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    (run.status.success(), err, Path::new(&out).exists())
}

const GPTQ_W8A8: &str = "
quant_stage:
  quant_modifiers:
    GPTQModifier:
      targets: Linear
      scheme: W8A8
      ignore: [lm_head]
";

#[test]
fn smoothquant_mappings_naming_absent_modules_are_refused_before_any_work() {
    let recipe = format!(
        "sq_stage:
  sq_modifiers:
    SmoothQuantModifier:
      smoothing_strength: 0.5
      mappings:
      - [['re:.*q_proj', 're:.*k_proj', 're:.*qkv_proj'], 're:.*input_layernorm']
{GPTQ_W8A8}"
    );
    let (ok, err, exists) = quantize_recipe(&recipe);
    assert!(!ok && !exists, "{err}");
    assert!(
        err.contains("SmoothQuantModifier: error resolving mappings")
            && err.contains("no matches found for keys: re:.*qkv_proj"),
        "{err}"
    );
    assert_eq!(
        err.matches("qforge: error").count(),
        1,
        "one error line: {err}"
    );
}

#[test]
fn smoothing_strength_outside_0_1_is_refused() {
    for bad in ["1.5", "-0.1"] {
        let recipe = format!(
            "sq_stage:\n  sq_modifiers:\n    SmoothQuantModifier:\n      smoothing_strength: {bad}\n{GPTQ_W8A8}"
        );
        let (ok, err, exists) = quantize_recipe(&recipe);
        assert!(!ok && !exists, "{err}");
        assert!(err.contains("outside [0, 1]"), "{bad}: {err}");
    }
}
