//! Tests that measure or change the whole process — every allocation and the peak heap through
//! a counting global allocator, the peak resident set size, the emulator's process-wide kernel limits,
//! the QFORGE_KERNEL_CACHE variable, wall-clock limits (scripts/gpu_check.sh) — so they cannot share it with the hundreds of tests of
//! the `it` binary running in parallel. Here each one holds [`alone`] while it runs, so they
//! do not disturb each other either. Add to this binary only tests that need that.

#[allow(dead_code, unused_imports)]
#[path = "../it/support/mod.rs"]
mod support;

#[cfg(feature = "cuda")]
mod emulator_limits;
#[cfg(feature = "cuda")]
mod gpu_check_script;
#[cfg(feature = "cuda")]
mod kernel_cache;
mod runtime_alloc;
mod verify_alloc;
mod verify_peak;
mod writer_mem;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The system allocator, counting allocations and reallocations (on every thread).
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Heap bytes live now, and the most live since [`reset_peak`].
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made so far by the whole process.
pub fn allocations() -> usize {
    ALLOCS.load(Ordering::Relaxed)
}

/// Starts a new peak at the heap bytes live now, and returns them.
pub fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The most heap bytes live since [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Held by each test of this binary while it runs, so that no other test allocates or grows
/// the process meanwhile (a failed test's poisoned lock is still a lock).
pub fn alone() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The fewest allocations in three runs of `count` (which returns what its run allocated).
/// The harness's main thread may allocate during one run (reporting the test that finished
/// just before, starting the next); an allocation per decode step shows in every run.
pub fn fewest(mut count: impl FnMut() -> usize) -> usize {
    (0..3).map(|_| count()).min().expect("three runs")
}
