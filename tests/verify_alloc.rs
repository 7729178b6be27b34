//! The decode loop allocates nothing per token: a counting global allocator compares a short
//! and a long generation on the tiny fixture (allocations on every thread are counted, so this
//! file holds one test; the final decode of the ids to text is measured apart and subtracted).

mod verify_util;

use qforge::runtime::generate::{generate, GenerateOptions};
use qforge::runtime::sampler::SamplingParams;
use qforge::runtime::tokenizer::TextTokenizer;
use qforge::runtime::{load, Device};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use verify_util::*;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made (on any thread) while `f` runs.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (ALLOCS.load(Ordering::Relaxed), out)
}

#[test]
fn decode_loop_does_not_allocate_per_token() {
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
        let short = run(model.as_mut(), 8, min_new);
        let long = run(model.as_mut(), 72, min_new);
        eprintln!("allocations besides decoding to text: 8 tokens {short}, 72 tokens {long}");
        // 64 more decode steps: a per-token allocation would add at least 64.
        assert!(
            long <= short + 2,
            "8 tokens: {short} allocations, 72 tokens: {long}"
        );
    }
}
