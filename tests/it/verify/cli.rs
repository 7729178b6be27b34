//! The `qforge verify` binary: `--json` output and exit codes (0 ok, 1 error, 2 gate failed).

use crate::support;
use crate::support::*;
use serde_json::Value;
use std::process::Output;

fn qforge(args: &[&str]) -> Output {
    support::qforge().arg("verify").args(args).output().unwrap()
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

    // A negative number is the option's value, refused by its range check (not by clap as
    // an unknown `-1` flag).
    for (flag, want) in [
        (
            "--temperature",
            "temperature must be a finite number >= 0, got -1",
        ),
        ("--top-p", "top_p must be in (0, 1], got -1"),
        (
            "--min-agreement",
            "--min-agreement must be between 0 and 1, got -1",
        ),
    ] {
        let out = qforge(&["--model", &model, "--prompt", "Hi", flag, "-1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end(), format!("qforge: error: {want}"));
    }
}

/// A copy of `name` whose config.json says `max_position_embeddings: context`.
fn with_context(name: &str, dst: &std::path::Path, context: u64) -> String {
    let dir = copy_fixture(name, dst, &[]);
    let cfg = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["max_position_embeddings"] = context.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    dir.to_string_lossy().into_owned()
}

/// Prompt + answer must fit the context of the model and of the reference (vLLM counts a
/// request the same way): a longer --max-new-tokens is capped and says so, a prompt that fills
/// the context is an error before anything runs.
#[test]
fn generation_fits_the_context() {
    fn args<'a>(m: &'a str, r: &'a str, n: &'a str) -> Vec<&'a str> {
        let a = ["--model", m, "--reference", r, "--prompt", "Hi", "--json"];
        [&a[..], &["--max-new-tokens", n, "--min-agreement", "0"]].concat()
    }
    let model = path("tiny-llama3-bf16");
    let out = qforge(&args(&model, &model, "1"));
    let p = json(&out)["prompt_tokens"].as_u64().unwrap();

    // The reference's context is the smaller: it sets the cap.
    let tmp = tempfile::tempdir().unwrap();
    let small = with_context("tiny-llama3-bf16", tmp.path(), p + 4);
    let out = qforge(&args(&model, &small, "10"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v = json(&out);
    assert_eq!(v["generation"]["token_ids"].as_array().unwrap().len(), 4);
    assert_eq!(v["reference"]["agreement"]["tokens"], 4);
    let note = format!(
        "qforge verify: --max-new-tokens 10 capped at 4: the prompt's {p} tokens and the \
         answer must fit the model's context of {} positions",
        p + 4
    );
    assert!(stderr.contains(&note), "{stderr}");

    // Exactly full: no note.
    let out = qforge(&args(&small, &small, "4"));
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("capped"));

    let full = with_context("tiny-llama3-bf16", &tmp.path().join("full"), p);
    let out = qforge(&args(&full, &model, "4"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!(
        "qforge: error: --prompt: {p} tokens (with the chat template) leave no room for an \
         answer in the model's context of {p} positions (max_position_embeddings)"
    );
    assert!(stderr.lines().any(|l| l == want), "{stderr}");
    assert!(out.stdout.is_empty());
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
#[requires(smollm2)]
#[test]
fn smollm2_self_verify() {
    let bf16 = smollm2();
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
