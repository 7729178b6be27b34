//! The `qforge verify` binary: `--json` output and exit codes (0 ok, 1 error, 2 gate failed).

mod verify_util;

use serde_json::Value;
use std::process::{Command, Output};
use verify_util::*;

fn qforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qforge"))
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn path(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

#[test]
fn gate_failure_exits_2_with_the_report() {
    let (model, reference) = (path("tiny-llama3-fp8-dynamic"), path("tiny-tied-bf16"));
    let out = qforge(&[
        "--model",
        &model,
        "--reference",
        &reference,
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let v = json(&out);
    assert_eq!(v["reference"]["passed"], false);
    assert_eq!(v["reference"]["agreement"]["top1_agreement"], 0.0);
    assert_eq!(v["reference"]["min_agreement"], 0.9);
    assert_eq!(v["generation"]["token_ids"].as_array().unwrap().len(), 3);
    assert!(
        stderr.contains("qforge: error: top-1 agreement 0.000 (0/3) < --min-agreement 0.900"),
        "{stderr}"
    );
    assert!(
        stderr.contains("device cpu"),
        "the picked device is named: {stderr}"
    );
}

#[test]
fn min_agreement_zero_passes() {
    let (model, reference) = (path("tiny-llama3-fp8-dynamic"), path("tiny-tied-bf16"));
    let out = qforge(&[
        "--model",
        &model,
        "--reference",
        &reference,
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "2",
        "--min-agreement",
        "0",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["reference"]["passed"], true);
}

#[test]
fn without_reference_prints_the_generation() {
    let model = path("tiny-llama3-bf16");
    let out = qforge(&[
        "--model",
        &model,
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert!(v["reference"].is_null());
    assert_eq!(v["generation"]["token_ids"].as_array().unwrap().len(), 5);
    assert_eq!(v["generation"]["decode_tokens"], 4);
    assert!(v["generation"]["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn errors_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("tiny-llama3-bf16", tmp.path(), &["tokenizer.json"]);
    let dir = dir.to_string_lossy().into_owned();
    let out = qforge(&["--model", &dir, "--prompt", "Hi", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tokenizer.json: not found"), "{stderr}");
    assert!(out.stdout.is_empty());

    let model = path("tiny-llama3-bf16");
    let out = qforge(&["--model", &model, "--prompt", "Hi", "--device", "cuda"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CUDA"), "{stderr}");
}

#[test]
fn human_report_streams_and_summarizes() {
    let (model, reference) = (path("tiny-llama3-bf16"), path("tiny-llama3-bf16"));
    let out = qforge(&[
        "--model",
        &model,
        "--reference",
        &reference,
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "2",
        "--min-agreement",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "top-1 agreement",
        "KL(ref || model)",
        "perplexity",
        "decode tok/s",
        "gate",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

/// SmolLM2 BF16 against itself through the binary: the answer, agreement 1 and KL 0.
#[test]
fn smollm2_self_verify() {
    let Some(bf16) = smollm2() else { return };
    let bf16 = bf16.to_string_lossy().into_owned();
    let out = qforge(&[
        "--model",
        &bf16,
        "--reference",
        &bf16,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "24",
        "--min-new-tokens",
        "24",
        "--min-agreement",
        "1",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let text = v["generation"]["text"].as_str().unwrap();
    assert!(text.starts_with(ANSWER), "{text}");
    assert_eq!(
        v["reference"]["generation"]["text"],
        v["generation"]["text"]
    );
    let a = &v["reference"]["agreement"];
    eprintln!("smollm2 bf16 self-verify: {a}");
    assert_eq!(a["tokens"], 24);
    assert_eq!(a["top1_agreement"], 1.0);
    assert_eq!(a["kl_mean"], 0.0);
    assert_eq!(a["kl_max"], 0.0);
    assert_eq!(a["perplexity_reference"], a["perplexity_model"]);
    assert!(a["perplexity_model"].as_f64().unwrap() >= 1.0);
}
