//! The decode loop allocates nothing per token: a counting global allocator compares a short
//! and a long generation on the tiny fixture (allocations on every thread are counted, so it
//! runs alone; the final decode of the ids to text is measured apart and subtracted).

use crate::support::fixture;
use crate::{alone, fewest};
use qforge::runtime::generate::{generate, GenerateOptions};
use qforge::runtime::sampler::SamplingParams;
use qforge::runtime::tokenizer::TextTokenizer;
use qforge::runtime::{load, Device};

/// Allocations made (on any thread) while `f` runs.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = crate::allocations();
    let out = f();
    (crate::allocations() - before, out)
}

#[test]
fn decode_loop_does_not_allocate_per_token() {
    let _alone = alone();
    let dir = fixture("tiny-llama3-bf16");
    let tok = TextTokenizer::load(&dir).unwrap();
    let prompt = tok.encode("Hello there", true).unwrap();
    let mut model = load(&dir, Device::Cpu, Some(128)).unwrap();
    let run = |model: &mut dyn qforge::runtime::Backend, n: usize, min_new: usize| {
        let opts = GenerateOptions {
            max_new_tokens: n,
            min_new_tokens: min_new,
            sampling: SamplingParams::greedy(),
        };
        let (total, g) = allocations(|| generate(model, &tok, &prompt, &opts, None).unwrap());
        assert_eq!(g.token_ids.len(), n, "the tiny model never picks EOS");
        let (text, _) = allocations(|| tok.decode(&g.token_ids).unwrap());
        total - text
    };
    // Warm up the model's scratch buffers and the thread pool.
    run(model.as_mut(), 4, 0);
    for min_new in [0, 100] {
        let short = fewest(|| run(model.as_mut(), 8, min_new));
        let long = fewest(|| run(model.as_mut(), 72, min_new));
        eprintln!("allocations besides decoding to text: 8 tokens {short}, 72 tokens {long}");
        // 64 more decode steps: a per-token allocation would add at least 64.
        assert!(
            long <= short + 2,
            "8 tokens: {short} allocations, 72 tokens: {long}"
        );
    }
}
