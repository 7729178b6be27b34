//! `quantize --dry-run`: the memory plan from config.json and the settings alone.

use crate::support::{fixture, qforge};

/// `quantize --dry-run` of a llama-70b-shaped model folder holding only config.json with a
/// GPTQ recipe, 512 samples × 2048 tokens, and `extra` arguments.
fn dry_run_70b(extra: &[&str]) -> std::process::Output {
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
        .args(extra)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!out.exists());
    run
}

/// The bar: the 70B plan fits 16 GB of RAM. The dry run does not need the 141 GB of
/// weights, and the dataset (here a path that does not exist) is not opened.
#[test]
fn dry_run_plans_llama_70b_under_16_gb_from_config_json_alone() {
    let run = dry_run_70b(&["--max-memory", "16GB"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("budget 16.00 GB (--max-memory)"), "{err}");
    // 512 × 2048 × 8192 BF16 = 17.18 GB per copy: they spill.
    assert!(
        err.contains("17.18 GB x 2 copies, spilled to a scratch file"),
        "{err}"
    );
    // down_proj's solve: 3 × 28672² f32 and its weight; one Hessian per distinct input.
    assert!(
        err.contains("GPTQ Hessians + solve    10.80 GB (Hessians alone 4.09 GB)"),
        "{err}"
    );
    let total = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("total in RAM"))
        .and_then(|t| t.trim().strip_suffix(" GB"))
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no total in {err}"));
    assert!(total < 16.0, "{total} GB");
}

/// A budget smaller than what cannot spill is refused up front, in one line, by the dry
/// run too.
#[test]
fn dry_run_refuses_a_budget_that_cannot_hold_the_layer() {
    let run = dry_run_70b(&["--max-memory", "8GB"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    let line = err
        .lines()
        .find(|l| l.starts_with("qforge: error"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("needs 15.59 GB of RAM besides the activations")
            && line.contains("budget is 8.00 GB (--max-memory)"),
        "{line}"
    );
}

/// Without --max-memory the budget is 3/4 of MemAvailable, and the plan says so.
#[test]
fn dry_run_prints_the_default_budget() {
    let run = dry_run_70b(&[]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("(3/4 of MemAvailable; --max-memory to change)"),
        "{err}"
    );
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

/// `make-model --layers N` writes the shape with N decoder layers (the peak-memory
/// measurement of a llama-1b calibration uses 2: it does not depend on depth).
#[test]
fn make_model_layers_sets_the_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-1");
    let run = qforge()
        .args(["make-model", "--shape", "tiny", "--layers", "1", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let config = qforge::runtime::config::ModelConfig::load(&out).unwrap();
    assert_eq!(config.num_layers, 1);
    let ck = qforge::checkpoint::Checkpoint::open(&out).unwrap();
    assert!(ck.get("model.layers.0.mlp.down_proj.weight").is_some());
    assert!(ck.get("model.layers.1.mlp.down_proj.weight").is_none());
    let zero = qforge()
        .args(["make-model", "--layers", "0", "--output"])
        .arg(tmp.path().join("none"))
        .output()
        .unwrap();
    assert!(!zero.status.success());
}
