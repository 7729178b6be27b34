//! `verify --reference` on a static FP8 SmolLM2 output (`quantize --dataset` with
//! recipes/fp8_static.yaml: per-tensor FP8 weights, static `input_scale`s, FP8 KV cache), as
//! issue #21 asks: it must load in the runtime and answer like BF16. Needs `QFORGE_SMOLLM2`.

use crate::support::*;

/// Calibration text: four short English paragraphs (written here so the test needs no data
/// set); `--max-seq-length 64` keeps the calibration to a few seconds.
const TEXT: [&str; 4] = [
    "The river runs through the old town, past the market square and the stone bridge that was built three hundred years ago.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour and bake it in a hot oven.",
    "The committee met on Tuesday to discuss the budget for next year, and most members agreed that the library needs a new roof.",
    "Paris is the capital of France. Berlin is the capital of Germany, and Madrid is the capital of Spain.",
];

/// Measured with this data (`qforge verify --max-new-tokens 64 --min-new-tokens 64`): top-1
/// agreement 52/64 = 0.812, mean KL 0.074 (docs/runtime.md). The agreement gate sits about six
/// tokens below, the KL gate at 2.7×: a broken static path (wrong scales, NaN) scores near 0;
/// the exactness of the arithmetic is checked on llm-compressor's fixture
/// (tests/it/runtime/calibrated.rs).
const MIN_AGREEMENT: f64 = 0.70;
const MAX_MEAN_KL: f64 = 0.2;

#[requires(smollm2)]
#[test]
fn smollm2_static_fp8_with_fp8_kv_cache_verifies_against_bf16() {
    let bf16 = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("calib.jsonl");
    let rows: Vec<String> = TEXT
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let out = tmp.path().join("smollm2-fp8-static");
    let q = qforge()
        .args(["quantize", "--model"])
        .arg(&bf16)
        .arg("--recipe")
        .arg(recipe("fp8_static.yaml"))
        .arg("--dataset")
        .arg(&data)
        .args([
            "--num-calibration-samples",
            "4",
            "--max-seq-length",
            "64",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let v = qforge()
        .args([
            "verify",
            "--device",
            "cpu",
            "--json",
            "--min-agreement",
            "0",
            "--model",
        ])
        .arg(&out)
        .arg("--reference")
        .arg(&bf16)
        .args([
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "64",
            "--min-new-tokens",
            "64",
        ])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let r: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let a = &r["reference"]["agreement"];
    eprintln!("smollm2 static fp8 vs bf16: {a}");
    let text = r["generation"]["text"].as_str().unwrap();
    assert!(text.starts_with(ANSWER), "{text}");
    assert_eq!(a["nonfinite_positions"], 0);
    assert!(
        a["top1_agreement"].as_f64().unwrap() >= MIN_AGREEMENT,
        "{a}"
    );
    assert!(a["kl_mean"].as_f64().unwrap() <= MAX_MEAN_KL, "{a}");
}
