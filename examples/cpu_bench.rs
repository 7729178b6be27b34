//! Times the CPU runtime: prefill of the 37-token golden prompt, then greedy decode.
//!
//! ```text
//! cargo run --release --example cpu_bench -- MODEL_DIR [DECODE_STEPS]
//! ```

use qforge::runtime::cpu::load_cpu;
use std::time::Instant;

/// The fixtures' chat-template prompt (fixtures/README.md §6.1).
const PROMPT: [u32; 37] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
    198,
];

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> qforge::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: cpu_bench MODEL_DIR [DECODE_STEPS]");
        std::process::exit(2);
    };
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let t0 = Instant::now();
    let mut m = load_cpu(std::path::Path::new(&dir))?;
    println!(
        "load: {:.2} s ({})",
        t0.elapsed().as_secs_f64(),
        qforge::runtime::Backend::describe(&m)
    );
    for round in 0..2 {
        let t0 = Instant::now();
        let mut next = argmax(m.forward_logits(&PROMPT, 0, false)?);
        let prefill = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for i in 0..steps {
            next = argmax(m.forward_logits(&[next], PROMPT.len() + i, false)?);
        }
        let decode = t0.elapsed().as_secs_f64();
        println!(
            "round {round}: prefill 37 tokens {:.1} ms ({:.0} tok/s); decode {steps} tokens {:.1} ms/token ({:.1} tok/s)",
            prefill * 1e3,
            37.0 / prefill,
            decode * 1e3 / steps as f64,
            steps as f64 / decode
        );
    }
    Ok(())
}
