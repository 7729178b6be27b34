//! Bad input to `qforge quantize`: each case exits non-zero with a one-line error that names
//! the culprit, never panics, and leaves nothing behind in the output's parent directory.

use crate::support::{self, requires};

use qforge::checkpoint::writer::OutTensor;
use qforge::checkpoint::DType;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    support::fixture("tiny-tied-bf16")
}

fn good_recipe() -> PathBuf {
    support::recipe("fp8_dynamic.yaml")
}

/// Copies the fixture model into `dst` (all files).
fn copy_model(dst: &Path) {
    support::copy_model(&fixture(), dst);
}

/// Rewrites `dir/model.safetensors` with `edit` applied to each (tensor, bytes).
fn rewrite_tensors(dir: &Path, edit: impl Fn(&mut OutTensor, &mut Vec<u8>)) {
    support::rewrite_tensors(dir, |mut t, mut data| {
        edit(&mut t, &mut data);
        Some((t, data))
    });
}

/// Runs `qforge quantize [extra] --model M --recipe R --output O`.
fn run_quantize(model: &Path, recipe: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    support::qforge()
        .arg("quantize")
        .args(extra)
        .arg("--model")
        .arg(model)
        .arg("--recipe")
        .arg(recipe)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap()
}

/// Runs quantize on `model` with `recipe` into a fresh output and checks the failure
/// contract; returns the error line.
fn fails(model: &Path, recipe: &Path) -> String {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    let result = run_quantize(model, recipe, &out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert_eq!(result.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("qforge: warning"))
        .collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("qforge: error: "), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    lines[0].to_string()
}

/// Checks that a run failed with exit 1 and exactly the one line `qforge: error: {line}`.
fn assert_refused(result: &std::process::Output, line: &str) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end(), format!("qforge: error: {line}"));
}

fn write_recipe(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("recipe.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn missing_or_invalid_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&m);
    std::fs::remove_file(m.join("config.json")).unwrap();
    assert!(fails(&m, &good_recipe()).contains("config.json"));
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    assert!(fails(&m, &good_recipe()).contains("config.json"));
}

#[test]
fn no_safetensors_files() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&m);
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    assert!(fails(&m, &good_recipe()).contains("safetensors"));
}

#[test]
fn corrupt_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&m);
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // Truncated: tensors run past the end of the file.
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(fails(&m, &good_recipe()).contains("model.safetensors"));
    // Header length larger than the file.
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    assert!(fails(&m, &good_recipe()).contains("model.safetensors"));
    // Garbage header.
    let mut bad = bytes;
    bad[8..20].copy_from_slice(b"not json at ");
    std::fs::write(&path, &bad).unwrap();
    assert!(fails(&m, &good_recipe()).contains("model.safetensors"));
}

#[test]
fn linear_weight_of_a_non_float_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&m);
    rewrite_tensors(&m, |t, data| {
        if t.name == "model.layers.1.mlp.up_proj.weight" {
            t.dtype = DType::I16;
            data.iter_mut().for_each(|b| *b = 1);
        }
    });
    let err = fails(&m, &good_recipe());
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("I16"),
        "{err}"
    );
}

#[test]
fn nan_and_inf_weights_name_tensor_and_row() {
    for (bits, what) in [(0x7FC0u16, "NaN"), (0xFF80u16, "-Inf")] {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("m");
        copy_model(&m);
        rewrite_tensors(&m, |t, data| {
            if t.name == "model.layers.0.mlp.down_proj.weight" {
                let cols = t.shape[1];
                let at = 2 * (17 * cols + 5); // row 17, col 5
                data[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
        });
        let err = fails(&m, &good_recipe());
        assert!(
            err.contains("model.layers.0.mlp.down_proj.weight") && err.contains("row 17"),
            "{what}: {err}"
        );
    }
}

#[test]
fn bad_recipes() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("a: [unclosed", "recipe"),
        (
            "s_stage:\n  m_modifiers:\n    GPTQModifier:\n      scheme: W4A16\n",
            "GPTQModifier",
        ),
        (
            "s_stage:\n  m_modifiers:\n    FrobnicateModifier: {}\n",
            "FrobnicateModifier",
        ),
        (
            "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      scheme: FP8_DYNAMIC\n      colour: blue\n",
            "colour",
        ),
        (
            "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      scheme: FP9_FANTASY\n",
            "unknown scheme FP9_FANTASY",
        ),
        (
            "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      scheme: NVFP4\n",
            "not supported yet",
        ),
        (
            "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      scheme: FP8_DYNAMIC\n      ignore: ['re:(unclosed']\n",
            "re:(unclosed",
        ),
    ];
    for (text, needle) in cases {
        let r = write_recipe(tmp.path(), text);
        let err = fails(&fixture(), &r);
        assert!(err.contains(needle), "recipe {text:?}: {err}");
    }
    let missing = tmp.path().join("nope.yaml");
    assert!(fails(&fixture(), &missing).contains("nope.yaml"));
}

#[test]
fn existing_output_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let result = run_quantize(&fixture(), &good_recipe(), &out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1));
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
}

/// An --output below a file: one line that names the file in the way (the OS alone says only
/// "File exists" or "Not a directory"), exit 1, and the file untouched.
#[test]
fn output_below_a_file_names_the_file() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    for out in [file.join("out"), file.join("sub/out")] {
        let result = run_quantize(&fixture(), &good_recipe(), &out, &[]);
        let want = format!(
            "output {}: cannot create its folder {}: {} is a file, not a folder",
            out.display(),
            out.parent().unwrap().display(),
            file.display()
        );
        assert_refused(&result, &want);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    }
}

/// An --output that is the input model's folder, or a folder above it, is refused even with
/// --force: it would replace the input, and --verify would compare the output with itself.
#[test]
fn output_over_the_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&m);
    let before = std::fs::read(m.join("model.safetensors")).unwrap();
    for (out, what) in [(m.clone(), "is"), (tmp.path().to_path_buf(), "contains")] {
        let result = run_quantize(&m, &good_recipe(), &out, &["--force", "--verify", "Hi"]);
        let want = format!(
            "output {}: {what} the input model {}; write the output elsewhere",
            out.display(),
            m.display()
        );
        assert_refused(&result, &want);
        assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), before);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
    // Inside the input's folder is allowed: the input stays as it is.
    let out = m.join("fp8");
    let result = run_quantize(&m, &good_recipe(), &out, &[]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), before);
}

/// The temporary folder of an earlier run for the same output whose process is gone is
/// removed (it may hold tens of GB); a live process's, and other outputs', are kept.
#[test]
fn folders_of_interrupted_runs_are_removed() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("out");
    // Above any pid_max (at most 2^22): no such process.
    let stale = parent.path().join(".out.qforge-tmp-99999999");
    let live = parent
        .path()
        .join(format!(".out.qforge-tmp-{}", std::process::id()));
    let other = parent.path().join(".other.qforge-tmp-99999999");
    for d in [&stale, &live, &other] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("model-00001-of-00002.safetensors"), b"partial").unwrap();
    }
    let result = run_quantize(&fixture(), &good_recipe(), &out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let note = format!(
        "qforge: removed {}, left by an interrupted run",
        stale.display()
    );
    assert!(stderr.lines().any(|l| l == note), "{stderr}");
    assert!(!stale.exists());
    assert!(live.join("model-00001-of-00002.safetensors").exists());
    assert!(other.join("model-00001-of-00002.safetensors").exists());
    assert!(out.join("config.json").exists());
}

/// --verify's bad options are refused before the quantization runs (for a 70B model that is an
/// hour not lost), each in one line, with nothing written.
#[test]
fn bad_verify_options_are_refused_before_quantizing() {
    for (extra, want) in [
        (
            ["--min-agreement", "-0.5"],
            "--min-agreement must be between 0 and 1, got -0.5",
        ),
        (
            ["--min-agreement", "1.5"],
            "--min-agreement must be between 0 and 1, got 1.5",
        ),
        (
            ["--verify-max-new-tokens", "0"],
            "--verify-max-new-tokens must be at least 1",
        ),
    ] {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("out");
        let args = [&["--verify", "Hi"][..], &extra[..]].concat();
        let result = run_quantize(&fixture(), &good_recipe(), &out, &args);
        assert_refused(&result, want);
        assert!(result.stdout.is_empty(), "{extra:?}: quantized first");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}

#[test]
fn unknown_architecture_warns_and_still_quantizes() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&m);
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    std::fs::write(
        m.join("config.json"),
        cfg.replace("LlamaForCausalLM", "FancyNewForCausalLM"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let result = run_quantize(&m, &good_recipe(), &out, &["--json"]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert!(summary["warnings"][0]
        .as_str()
        .unwrap()
        .contains("FancyNewForCausalLM"));
    assert_eq!(summary["quantized"], 14);
}

/// A recipe whose targets match no Linear module still writes its (unquantized) output, as
/// asked, but says so.
#[test]
fn targets_matching_nothing_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(good_recipe()).unwrap();
    assert!(text.contains("targets: Linear\n"), "{text}");
    let recipe = write_recipe(
        tmp.path(),
        &text.replace("targets: Linear\n", "targets: Conv2d\n"),
    );
    let out = tmp.path().join("out");
    let result = run_quantize(&fixture(), &recipe, &out, &["--json"]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["quantized"], 0);
    let modules = summary["ignored"].as_array().unwrap().len();
    assert_eq!(
        summary["warnings"],
        serde_json::json!([format!(
            "nothing is quantized: the recipe's targets [\"Conv2d\"] match none of the model's \
             {modules} Linear modules, or all of them are ignored"
        )])
    );
}

/// Checks a disk-full failure: one line that starts with `start`, exit 1, nothing left in
/// `parent` (on the full filesystem).
fn assert_disk_full(result: &std::process::Output, parent: &Path, start: &str) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(start), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(parent).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// An output whose tensors cannot fit is refused before anything is written: the fixture's
/// 6.4 MB of tensors on the 3 MB filesystem.
#[requires(small_fs)]
#[test]
fn full_disk_is_refused_up_front() {
    let small = support::small_fs();
    let parent = tempfile::tempdir_in(small).unwrap();
    let out = parent.path().join("out");
    let result = run_quantize(&fixture(), &good_recipe(), &out, &[]);
    let start = format!(
        "qforge: error: output {}: no space left on device: its tensors need 6.4 MB, ",
        out.display()
    );
    assert_disk_full(&result, parent.path(), &start);
}

/// `make-model` checks the same way: the tiny shape's 4.8 MB on the 3 MB filesystem.
#[requires(small_fs)]
#[test]
fn make_model_refuses_an_output_that_cannot_fit() {
    let small = support::small_fs();
    let parent = tempfile::tempdir_in(small).unwrap();
    let out = parent.path().join("out");
    let result = support::qforge()
        .args(["make-model", "--shape", "tiny", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let start = format!(
        "qforge: error: output {}: no space left on device: its tensors need 4.8 MB, ",
        out.display()
    );
    assert_disk_full(&result, parent.path(), &start);
}

/// A disk that fills up during the run (here: tensors that fit, then the fixture's 3.5 MB
/// tokenizer.json that does not) is reported by the write that failed, and cleaned up.
#[requires(small_fs)]
#[test]
fn full_disk_during_the_run_is_reported_and_cleaned_up() {
    let small = support::small_fs();
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    let shape = qforge::synthetic::LlamaShape {
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 1000,
        tied: true,
        rope_factor: 32.0,
    };
    qforge::synthetic::write_checkpoint(&shape, &m, 0, u64::MAX).unwrap();
    let tokenizer = fixture().join("tokenizer.json");
    assert!(std::fs::metadata(&tokenizer).unwrap().len() > 3 << 20);
    std::fs::copy(&tokenizer, m.join("tokenizer.json")).unwrap();
    let parent = tempfile::tempdir_in(small).unwrap();
    let out = parent.path().join("out");
    let result = run_quantize(&m, &good_recipe(), &out, &[]);
    let tmp_dir = ".out.qforge-tmp-";
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains(tmp_dir) && stderr.contains("tokenizer.json"),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with(": no space left on device"),
        "{stderr}"
    );
    assert_disk_full(&result, parent.path(), "qforge: error: ");
}
