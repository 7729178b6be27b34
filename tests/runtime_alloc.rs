//! The decode loop does not allocate: after a warm-up step, `forward_logits` for one token at
//! a time makes no heap allocation of its own (KV cache, scratch buffers and rope tables are
//! preallocated), counted with a wrapping global allocator over 100 steps.

mod runtime_util;

use qforge::runtime::cpu::load_cpu;
use runtime_util::fixture;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STEPS: usize = 100;

#[test]
fn decode_steps_do_not_allocate() {
    for checkpoint in ["tiny-llama3-fp8-dynamic", "tiny-tied-bf16"] {
        let mut m = load_cpu(&fixture(checkpoint)).unwrap();
        let prompt = [1u32, 9690, 198, 2683, 359];
        m.forward_logits(&prompt, 0, false).unwrap();
        m.forward_logits(&[253], prompt.len(), false).unwrap(); // warm-up step
        let before = ALLOCS.load(Ordering::Relaxed);
        let mut next = 5356;
        for step in 0..STEPS {
            let logits = m
                .forward_logits(&[next], prompt.len() + 1 + step, false)
                .unwrap();
            next = (logits.iter().map(|v| v.to_bits() as usize).sum::<usize>() % 40000) as u32;
        }
        let n = ALLOCS.load(Ordering::Relaxed) - before;
        eprintln!("{checkpoint}: {n} allocations in {STEPS} decode steps");
        // Entering the thread pool from outside pushes one job onto rayon's global injector
        // queue, which allocates one 1.5 KB block per 63 jobs: at most 2 here.
        assert!(
            n <= 2,
            "{checkpoint}: {n} allocations in {STEPS} decode steps"
        );
    }
}
