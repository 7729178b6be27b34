//! `quantize --dry-run`: the memory plan from config.json and the settings alone.

use crate::support::{fixture, qforge};

/// A llama-70b-shaped model folder holding only config.json: the dry run must not need the
/// 141 GB of weights, and the dataset (here a path that does not exist) is not opened.
#[test]
fn dry_run_plans_llama_70b_from_config_json_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama-70b");
    std::fs::create_dir(&model).unwrap();
    let shape = qforge::synthetic::named_shape("llama-70b").unwrap();
    std::fs::write(model.join("config.json"), shape.config().to_string()).unwrap();
    let out = tmp.path().join("out");
    let run = qforge()
        .args(["quantize", "--model"])
        .arg(&model)
        .arg("--recipe")
        .arg(fixture("calibration/g128-gptq_w4a16/input-recipe.yaml"))
        .args(["--dataset", "/nonexistent/calibration.jsonl", "--dry-run"])
        .args([
            "--num-calibration-samples",
            "512",
            "--max-seq-length",
            "2048",
        ])
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    // 512 × 2048 × 8192 f32 = 34.36 GB per copy; down_proj's 28672² Hessian and solve.
    assert!(err.contains("34.36 GB x 2 copies"), "{err}");
    assert!(err.contains("GPTQ Hessians + solve    17.38 GB"), "{err}");
    assert!(!out.exists());
}

/// Without --dataset there is nothing to plan: clap refuses --dry-run alone.
#[test]
fn dry_run_needs_a_dataset() {
    let run = qforge()
        .args(["quantize", "--model", "/nonexistent", "--scheme", "W8A8"])
        .args(["--dry-run", "--output", "/nonexistent/out"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(err.contains("--dataset"), "{err}");
}
