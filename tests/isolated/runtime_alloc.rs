//! The decode loop does not allocate: after a warm-up step, `forward_logits` for one token at
//! a time makes no heap allocation of its own (KV cache, scratch buffers and rope tables are
//! preallocated), counted with the counting global allocator over 100 steps.

use crate::support::fixture;
use crate::{allocations, alone, fewest};
use qforge::runtime::cpu::load_cpu;

const STEPS: usize = 100;

#[test]
fn decode_steps_do_not_allocate() {
    let _alone = alone();
    for checkpoint in ["tiny-llama3-fp8-dynamic", "tiny-tied-bf16"] {
        let mut m = load_cpu(&fixture(checkpoint)).unwrap();
        let prompt = [1u32, 9690, 198, 2683, 359];
        m.forward_logits(&prompt, 0, false).unwrap();
        m.forward_logits(&[253], prompt.len(), false).unwrap(); // warm-up step
        let n = fewest(|| {
            let before = allocations();
            let mut next = 5356;
            for step in 0..STEPS {
                let logits = m
                    .forward_logits(&[next], prompt.len() + 1 + step, false)
                    .unwrap();
                next = (logits.iter().map(|v| v.to_bits() as usize).sum::<usize>() % 40000) as u32;
            }
            allocations() - before
        });
        eprintln!("{checkpoint}: {n} allocations in {STEPS} decode steps");
        // Entering the thread pool from outside pushes one job onto rayon's global injector
        // queue, which allocates one 1.5 KB block per 63 jobs: at most 2 here.
        assert!(
            n <= 2,
            "{checkpoint}: {n} allocations in {STEPS} decode steps"
        );
    }
}
