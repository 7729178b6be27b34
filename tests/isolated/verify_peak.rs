//! `verify` with a reference does not keep a row of logits per prompt position: its peak heap
//! grows with the prompt by far less than `vocab × 4` bytes per token (issue #20 item 3).
//! The binary's global allocator tracks the live and peak heap bytes (every thread).

use crate::{alone, peak, reset_peak};
use qforge::runtime::verify::{verify, Output, VerifyOptions};
use qforge::runtime::Device;

/// Peak heap bytes above the starting level while `verify` runs the model against itself on
/// `prompt`; returns them with the prompt's token count.
fn peak_of(prompt: &str) -> (usize, usize) {
    let model = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/tiny-random-llama"
    ));
    let opts = VerifyOptions {
        reference: Some(model.to_string_lossy().into_owned()),
        max_new_tokens: 4,
        min_new_tokens: 4,
        output: Output::Silent,
        device: Device::Cpu,
        ..VerifyOptions::new(model.to_string_lossy(), prompt)
    };
    let base = reset_peak();
    let report = verify(&opts).unwrap();
    let agreement = report.reference.unwrap().agreement;
    assert_eq!(agreement.tokens, 4, "{agreement:?}");
    assert_eq!(agreement.top1_agreement, 1.0, "a model agrees with itself");
    assert_eq!(agreement.kl_max, Some(0.0));
    (peak() - base, report.prompt_tokens)
}

#[test]
fn verify_memory_does_not_grow_with_prompt_times_vocab() {
    let _alone = alone();
    let vocab = 49152; // tiny-random-llama
    peak_of("warm up"); // thread pool, lazy statics
    let (short, short_tokens) = peak_of("Hello there");
    let long_prompt = "The quick brown fox jumps over the lazy dog. ".repeat(120);
    let (long, long_tokens) = peak_of(&long_prompt);
    let extra = long_tokens - short_tokens;
    eprintln!(
        "peak heap: {short_tokens} prompt tokens {short} B, {long_tokens} tokens {long} B \
         ({} B per extra token; a logits row is {} B)",
        long.saturating_sub(short) / extra,
        vocab * 4
    );
    assert!(extra > 1000, "{extra}");
    // One logits row per extra token would add vocab × 4 bytes each; allow a twentieth.
    assert!(
        long.saturating_sub(short) < extra * vocab * 4 / 20,
        "peak grew by {} B over {extra} tokens",
        long - short
    );
}
