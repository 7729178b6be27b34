//! `quantize --dry-run`: the memory plan from config.json and the settings alone.

use crate::support::{fixture, qforge};

/// `quantize --dry-run` of a llama-70b-shaped model folder holding only config.json with a
/// GPTQ recipe, 512 samples × 2048 tokens, and `extra` arguments.
fn dry_run_70b(extra: &[&str]) -> std::process::Output {
    dry_run_70b_with("g128-gptq_w4a16", extra)
}

/// [`dry_run_70b`] with the input recipe of the calibration fixture `case`, on 2 threads.
fn dry_run_70b_with(case: &str, extra: &[&str]) -> std::process::Output {
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
        .arg(fixture("calibration").join(case).join("input-recipe.yaml"))
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
        .env("RAYON_NUM_THREADS", "2")
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

/// AWQ's caches are in the plan and in the budget check (issue #22), and spill with the
/// activations. By hand (`plan::llama_70b_awq_plan_counts_its_caches_and_spills_them` has
/// the sums): 512 × 2048 tokens × (8192 + 8192 + 28672 cached inputs + 8192 outputs) BF16 =
/// 111.67 GB of caches; the search holds the gate/up weights and one copy (2.82 GB) and two
/// threads' parent forwards (2.85 GB): 5.67 GB, which cannot spill. The layer passes run two
/// samples at once (2.69 GB of buffers and recordings) when the budget holds them.
#[test]
fn dry_run_plans_awq_on_llama_70b_spilling_its_caches() {
    let run = dry_run_70b_with("g128-awq_w4a16_asym", &["--max-memory", "16GB"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains("AWQ caches (BF16)        111.67 GB, spilled to a scratch file"),
        "{err}"
    );
    assert!(err.contains("AWQ search               5.67 GB"), "{err}");
    assert!(err.contains("(2 samples at once)"), "{err}");
    assert!(err.contains("total in RAM             12.25 GB"), "{err}");
    // In RAM when the budget holds them: 12.25 + 2 × 17.18 + 111.67 GB.
    let run = dry_run_70b_with("g128-awq_w4a16_asym", &["--max-memory", "160GB"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("total in RAM             158.28 GB"), "{err}");
    let run = dry_run_70b_with("g128-awq_w4a16_asym", &["--max-memory", "10GB"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("needs 10.45 GB of RAM besides the activations"),
        "{err}"
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
