//! `verify` on SmolLM2-135M-Instruct (needs `QFORGE_SMOLLM2`, the BF16 directory built by
//! shared/scripts/make_smollm2.sh): the greedy answer of BF16 and of the FP8 checkpoint that
//! `qforge::quantize` makes from it, and the FP8 model's agreement with BF16 over a 64-token
//! continuation, printed and gated.

use crate::support::*;
use qforge::quantize::{quantize, QuantizeJob};
use qforge::runtime::generate::StopReason;
use qforge::runtime::verify::{verify, VerifyReport};
use std::path::Path;

/// The golden greedy ids (transformers, BF16 upcast to f32) up to and including the first EOS.
const GOLDEN_GREEDY: [u32; 8] = [504, 3575, 282, 4649, 314, 7042, 30, 2];

/// Gate for FP8 vs BF16 top-1 agreement over 64 teacher-forced tokens. Measured with this
/// runtime (`qforge verify --max-new-tokens 64 --min-new-tokens 64`) on six prompts (this one,
/// a haiku, prime numbers, Rust tips, Romeo and Juliet, primary colors): 58, 57, 61, 62, 60,
/// 59 of 64 (0.89-0.97); this prompt gave 61/64 before a harmless change of the CPU attention
/// code. The FP8 model's own continuation, which both models are scored on, moves with such
/// changes: two correct W8A8 implementations flip low-margin tokens (fixtures/README.md §6.4).
/// So the gate sits about six tokens below the lowest measurement; a broken FP8 path (wrong
/// scales or layout, NaN) scores near 0 (see tests/verify_tiny.rs).
const MIN_AGREEMENT: f64 = 0.80;
/// About 2.7 times the largest mean KL measured on those prompts (0.037 nats/token).
const MAX_MEAN_KL: f64 = 0.10;

fn speed(what: &str, r: &VerifyReport) {
    let g = &r.generation;
    eprintln!(
        "{what}: prefill {} tokens {:.1} tok/s, decode {} tokens {:.1} tok/s ({})",
        g.prompt_tokens, g.prefill_tokens_per_s, g.decode_tokens, g.decode_tokens_per_s, r.device
    );
}

/// Greedy, stopping at EOS: the exact answer, and the number of new tokens.
fn check_answer(what: &str, model: &Path) {
    let r = verify(&silent(model, 16)).unwrap();
    speed(what, &r);
    assert_eq!(
        r.prompt_tokens, 37,
        "{what}: the golden prompt has 37 tokens"
    );
    assert_eq!(r.generation.text, ANSWER, "{what}");
    assert_eq!(r.generation.stop, StopReason::Eos, "{what}");
    assert_eq!(r.generation.token_ids, GOLDEN_GREEDY, "{what}");
}

#[requires(smollm2)]
#[test]
fn smollm2_bf16_greedy_answer() {
    let bf16 = smollm2();
    check_answer("smollm2 bf16", &bf16);
}

#[requires(smollm2)]
#[test]
fn smollm2_fp8_answer_and_agreement() {
    let bf16 = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let fp8 = tmp.path().join("smollm2-fp8-dynamic");
    let recipe = recipe("fp8_dynamic.yaml");
    let summary = quantize(&QuantizeJob::new(&bf16, &recipe, &fp8)).unwrap();
    assert_eq!(summary.quantized, 210, "30 layers x 7 Linear modules");
    check_answer("smollm2 fp8", &fp8);

    let mut o = silent(&fp8, 64);
    o.min_new_tokens = 64;
    o.reference = Some(bf16.to_string_lossy().into_owned());
    o.min_agreement = Some(MIN_AGREEMENT);
    let r = verify(&o).unwrap();
    let rr = r.reference.as_ref().unwrap();
    let a = &rr.agreement;
    eprintln!("smollm2 fp8 text:       {:?}", r.generation.text);
    eprintln!("smollm2 bf16 reference: {:?}", rr.generation.text);
    eprintln!(
        "smollm2 fp8 vs bf16 over {} tokens: top-1 {}/{} = {:.3}, KL mean {:.5} max {:.5}, \
         perplexity bf16 {:.4} fp8 {:.4}",
        a.tokens,
        a.top1_matches,
        a.tokens,
        a.top1_agreement,
        a.kl_mean.unwrap(),
        a.kl_max.unwrap(),
        a.perplexity_reference.unwrap(),
        a.perplexity_model.unwrap()
    );
    assert_eq!(r.generation.token_ids.len(), 64);
    assert!(
        r.generation.text.starts_with(ANSWER),
        "{}",
        r.generation.text
    );
    assert!(
        rr.generation.text.starts_with(ANSWER),
        "{}",
        rr.generation.text
    );
    assert_eq!(a.nonfinite_positions, 0);
    assert!(a.top1_agreement >= MIN_AGREEMENT, "{a:?}");
    assert!(a.kl_mean.unwrap() <= MAX_MEAN_KL, "{a:?}");
    assert!(rr.passed);
    r.gate().unwrap();
}
