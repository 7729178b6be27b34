//! `verify` on the tiny fixtures: its error paths and the agreement gate (the tiny models'
//! logits are NaN / degenerate by design, fixtures/README.md §6.4, so a tiny model never
//! passes), and how sampling flags resolve against `generation_config.json`.

use crate::support::*;
use qforge::runtime::generate::SamplingArgs;
use qforge::runtime::verify::{run, verify};
use qforge::runtime::{resolve_device, Device};
use qforge::Error;

/// The FP8 tiny model (NaN logits everywhere) against an unrelated BF16 tiny model.
fn mismatched() -> qforge::runtime::verify::VerifyOptions {
    let mut o = silent(&fixture("tiny-llama3-fp8-dynamic"), 4);
    o.reference = Some(fixture("tiny-tied-bf16").to_string_lossy().into_owned());
    o
}

#[test]
fn missing_tokenizer_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("tiny-llama3-bf16", tmp.path(), &["tokenizer.json"]);
    let err = verify(&silent(&dir, 4)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Runtime(_)), "{err:?}");
    assert!(
        msg.contains(&format!(
            "{}: not found",
            dir.join("tokenizer.json").display()
        )),
        "{msg}"
    );
}

#[test]
fn reference_without_tokenizer_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("tiny-tied-bf16", tmp.path(), &["tokenizer.json"]);
    let mut o = silent(&fixture("tiny-llama3-bf16"), 4);
    o.reference = Some(dir.to_string_lossy().into_owned());
    let msg = verify(&o).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json: not found"), "{msg}");
}

#[test]
fn missing_model_directory_names_the_flag() {
    let mut o = silent(&fixture("tiny-llama3-bf16"), 4);
    o.reference = Some("/nonexistent/qforge-model".into());
    let msg = verify(&o).unwrap_err().to_string();
    assert!(
        msg.contains("--reference /nonexistent/qforge-model"),
        "{msg}"
    );
}

#[test]
fn gate_fails_with_verify_error() {
    let report = verify(&mismatched()).unwrap();
    let r = report.reference.as_ref().unwrap();
    assert_eq!(report.generation.token_ids.len(), 4);
    assert_eq!(r.agreement.tokens, 4);
    // Every FP8 tiny row is NaN: no position can agree, KL and perplexity are undefined.
    assert_eq!(r.agreement.nonfinite_positions, 4);
    assert_eq!(r.agreement.top1_agreement, 0.0);
    assert_eq!(r.agreement.kl_mean, None);
    assert!(!r.passed);
    let err = report.gate().unwrap_err();
    assert!(matches!(err, Error::Verify(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "top-1 agreement 0.000 (0/4) < --min-agreement 0.900"
    );
    // `run` (what the CLI calls) returns the same error after printing.
    assert!(matches!(run(&mismatched()), Err(Error::Verify(_))));
}

#[test]
fn no_gate_without_min_agreement() {
    let mut o = mismatched();
    o.min_agreement = None;
    let report = run(&o).unwrap();
    assert!(report.reference.unwrap().passed);
}

#[test]
fn reference_with_another_chat_template_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture("tiny-tied-bf16", tmp.path(), &[]);
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ messages[0]['content'] }}",
    )
    .unwrap();
    let mut o = silent(&fixture("tiny-llama3-bf16"), 4);
    o.reference = Some(dir.to_string_lossy().into_owned());
    let msg = verify(&o).unwrap_err().to_string();
    assert!(msg.contains("other prompt token ids"), "{msg}");
}

#[test]
fn bad_numbers_are_refused() {
    let model = fixture("tiny-llama3-bf16");
    let msg = verify(&silent(&model, 0)).unwrap_err().to_string();
    assert!(msg.contains("--max-new-tokens"), "{msg}");
    let mut o = silent(&model, 4);
    o.min_agreement = Some(1.5);
    let msg = verify(&o).unwrap_err().to_string();
    assert!(msg.contains("--min-agreement"), "{msg}");
    let mut o = silent(&model, 4);
    o.sampling.temperature = Some(-1.0);
    let msg = verify(&o).unwrap_err().to_string();
    assert!(msg.contains("temperature"), "{msg}");
}

#[test]
fn devices() {
    assert_eq!(resolve_device(Device::Auto).unwrap(), Device::Cpu);
    assert_eq!(resolve_device(Device::Cpu).unwrap(), Device::Cpu);
    let err = resolve_device(Device::Cuda).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    #[cfg(not(feature = "cuda"))]
    assert!(err.to_string().contains("cargo feature `cuda`"), "{err}");
    let mut o = silent(&fixture("tiny-llama3-bf16"), 4);
    o.device = Device::Cuda;
    assert!(matches!(verify(&o), Err(Error::Unsupported(_))));
}

#[test]
fn report_serializes_to_json() {
    let report = verify(&mismatched()).unwrap();
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["prompt_tokens"], 37); // the golden prompt (fixtures/README.md §6.1)
    assert_eq!(v["generation"]["stop"], "max_new_tokens");
    assert_eq!(v["sampling"]["greedy"], true);
    assert_eq!(v["reference"]["passed"], false);
    assert!(v["reference"]["agreement"]["kl_mean"].is_null());
}

#[test]
fn sampling_flags_resolve_against_generation_config() {
    // The tiny fixtures' generation_config.json sets no sampling keys: transformers' defaults.
    let dir = fixture("tiny-llama3-bf16");
    let greedy = SamplingArgs::default().resolve(&dir).unwrap();
    assert!(greedy.is_greedy());
    let zero = SamplingArgs {
        temperature: Some(0.0),
        top_p: Some(0.5),
        ..Default::default()
    };
    assert!(zero.resolve(&dir).unwrap().is_greedy());
    let seeded = SamplingArgs {
        seed: Some(7),
        ..Default::default()
    }
    .resolve(&dir)
    .unwrap();
    assert_eq!(
        (seeded.temperature, seeded.top_p, seeded.top_k, seeded.seed),
        (1.0, 1.0, 50, 7)
    );
    let hot = SamplingArgs {
        temperature: Some(0.7),
        top_k: Some(5),
        ..Default::default()
    }
    .resolve(&dir)
    .unwrap();
    assert_eq!((hot.temperature, hot.top_k, hot.seed), (0.7, 5, 0));
    let tmp = tempfile::tempdir().unwrap();
    let custom = copy_fixture("tiny-llama3-bf16", tmp.path(), &[]);
    std::fs::write(
        custom.join("generation_config.json"),
        r#"{"temperature": 0.6, "top_p": 0.9, "top_k": 20}"#,
    )
    .unwrap();
    let from_file = SamplingArgs {
        seed: Some(1),
        ..Default::default()
    }
    .resolve(&custom)
    .unwrap();
    assert_eq!(
        (from_file.temperature, from_file.top_p, from_file.top_k),
        (0.6, 0.9, 20)
    );
}
