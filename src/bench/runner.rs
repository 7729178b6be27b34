//! The timed loop: one profile single-stream, greedy, forced to its length (EOS ignored), on
//! any [`Backend`]; and the CPU's measured copy bandwidth.

use super::profile::Profile;
use crate::runtime::Backend;
use crate::Result;
use serde::Serialize;
use std::time::Instant;

/// One profile's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From the request to the last generated token.
    pub latency_s: f64,
    /// Time to first token: the prefill and the first pick.
    pub ttft_s: f64,
    /// Generated tokens after the first, per second of decoding (0 when only one).
    pub decode_tokens_per_s: f64,
}

/// `n` prompt token ids, deterministic and spread over the vocabulary.
pub fn prompt_ids(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| {
            let r = (i + 1)
                .wrapping_add(salt << 32)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((r >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Runs `p` once: random prompt, then exactly `p.generate` greedy tokens.
pub fn run_profile(m: &mut dyn Backend, p: Profile) -> Result<Timing> {
    let prompt = prompt_ids(p.prompt, m.vocab_size(), p.generate as u64);
    m.reset();
    let start = Instant::now();
    let mut tok = m.next_token(&prompt, 0)?;
    let ttft_s = start.elapsed().as_secs_f64();
    for i in 1..p.generate {
        tok = m.next_token(&[tok], p.prompt + i - 1)?;
    }
    let latency_s = start.elapsed().as_secs_f64();
    let decode_s = latency_s - ttft_s;
    let decode_tokens_per_s = match p.generate {
        1 => 0.0,
        g => (g - 1) as f64 / decode_s.max(1e-12),
    };
    Ok(Timing {
        prompt_tokens: p.prompt,
        generated_tokens: p.generate,
        latency_s,
        ttft_s,
        decode_tokens_per_s,
    })
}

/// Untimed warm-up: a short prompt and a few decode steps (first-touch of the weights, GEMM
/// plans, scratch growth).
pub fn warm_up(m: &mut dyn Backend, prompt: usize) -> Result<()> {
    let ids = prompt_ids(prompt.max(1), m.vocab_size(), 99);
    m.reset();
    let mut tok = m.next_token(&ids, 0)?;
    for i in 0..2 {
        tok = m.next_token(&[tok], ids.len() + i)?;
    }
    m.reset();
    Ok(())
}

/// Host memory copy bandwidth, GB/s counting bytes read + written: the best of 3 parallel
/// copies of 256 MiB (after one untimed copy that faults the pages in).
pub fn cpu_copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 256usize << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let chunk = n / (4 * rayon::current_num_threads()).max(1);
    let mut copy = || {
        let t0 = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        t0.elapsed().as_secs_f64()
    };
    copy();
    let best = (0..3).map(|_| copy()).fold(f64::INFINITY, f64::min);
    std::hint::black_box(&dst);
    2.0 * n as f64 / best / 1e9
}
