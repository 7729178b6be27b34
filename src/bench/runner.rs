//! The timed loop: one profile single-stream, greedy, forced to its length (EOS ignored), on
//! any backend behind [`BenchModel`]; and the CPU's measured copy bandwidth.

use super::profile::Profile;
use crate::runtime::cpu::CpuModel;
use crate::Result;
use serde::Serialize;
use std::time::Instant;

/// A loaded model as the benchmark drives it.
pub trait BenchModel {
    /// Runs `tokens` at positions `pos..` (the KV cache holds `0..pos`) and returns the greedy
    /// next token.
    fn next_token(&mut self, tokens: &[u32], pos: usize) -> Result<u32>;
    /// Empties the KV cache.
    fn reset(&mut self);
    fn vocab_size(&self) -> usize;
    /// Weight bytes one decode step reads.
    fn bytes_per_token(&self) -> u64;
    /// A short human name of the device and backend.
    fn describe(&self) -> String;
}

/// Prompt rows per CPU forward pass: bounds the scratch (its logits buffer is `[rows, vocab]`).
const CPU_PREFILL_ROWS: usize = 128;

/// The CPU backend with its weight traffic per token.
pub struct CpuBench {
    pub model: CpuModel,
    pub bytes: u64,
}

impl BenchModel for CpuBench {
    fn next_token(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        let mut at = pos;
        let mut last = &[][..];
        for chunk in tokens.chunks(CPU_PREFILL_ROWS) {
            last = self.model.forward_logits(chunk, at, false)?;
            at += chunk.len();
        }
        Ok(argmax(last))
    }
    fn reset(&mut self) {
        crate::runtime::Backend::reset(&mut self.model)
    }
    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }
    fn bytes_per_token(&self) -> u64 {
        self.bytes
    }
    fn describe(&self) -> String {
        crate::runtime::Backend::describe(&self.model)
    }
}

/// Index of the largest value (the first of equals; NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

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
pub fn run_profile(m: &mut dyn BenchModel, p: Profile) -> Result<Timing> {
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
pub fn warm_up(m: &mut dyn BenchModel, prompt: usize) -> Result<()> {
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
