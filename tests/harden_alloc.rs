//! `verify` with a reference does not keep a row of logits per prompt position: its peak heap
//! grows with the prompt by far less than `vocab × 4` bytes per token (issue #20 item 3).
//! A global allocator tracks the live and peak heap bytes (every thread), so this file holds
//! one test.

use qforge::runtime::verify::{verify, Output, VerifyOptions};
use qforge::runtime::Device;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: defers to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

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
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let report = verify(&opts).unwrap();
    let agreement = report.reference.unwrap().agreement;
    assert_eq!(agreement.tokens, 4, "{agreement:?}");
    assert_eq!(agreement.top1_agreement, 1.0, "a model agrees with itself");
    assert_eq!(agreement.kl_max, Some(0.0));
    (PEAK.load(Ordering::Relaxed) - base, report.prompt_tokens)
}

#[test]
fn verify_memory_does_not_grow_with_prompt_times_vocab() {
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
