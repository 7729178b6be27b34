//! Token selection on the GPU: `top_k_rows` and `argmax_rows` select exactly what the host's
//! `top_candidates` selects (ties, NaN, ±inf, ±0, every radix pass), and generation that
//! picks from the GPU's candidates gives the very tokens that reading the whole logits row
//! back gives. Each check runs on the emulator and on a real GPU when present.

use crate::support;
use crate::support::cuda::{devices, same_device};
use crate::support::requires;
use qforge::runtime::cuda::gpu::Gpu;
use qforge::runtime::cuda::model::{load_cuda_on, CudaOptions};
use qforge::runtime::cuda::{ops, CudaModel};
use qforge::runtime::generate::{generate, GenerateOptions};
use qforge::runtime::sampler::{top_candidates, SamplingParams};
use qforge::runtime::tokenizer::TextTokenizer;
use qforge::runtime::Backend;
use qforge::Result;

/// Deterministic logits: `distinct` different values (so that they tie when few), with NaN,
/// ±inf and ±0 sprinkled in.
fn row(n: usize, seed: u64, distinct: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            match (i * 7919) % 1009 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 => -0.0,
                3 => 0.0,
                4 if seed % 2 == 0 => f32::INFINITY,
                _ => ((s >> 33) % distinct) as f32 * 0.125 - 20.0,
            }
        })
        .collect()
}

/// Runs argmax (k = 1) or top-k on the device over `rows` of `n` logits; (value bits, id).
fn select(g: &Gpu, rows: &[Vec<f32>], n: usize, k: usize) -> Vec<Vec<(u32, u32)>> {
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let logits = g.upload_new(&bytes).unwrap();
    let out = g.alloc(rows.len() * k * 8).unwrap();
    if k == 1 {
        ops::argmax_rows(g, logits.ptr, rows.len(), n, out.ptr).unwrap();
    } else {
        ops::top_k_rows(g, logits.ptr, rows.len(), n, k, out.ptr).unwrap();
    }
    let mut b = vec![0u8; rows.len() * k * 8];
    g.download(out.ptr, &mut b).unwrap();
    let words: Vec<u32> = b
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    words
        .chunks_exact(2 * k)
        .map(|r| r.chunks_exact(2).map(|p| (p[0], p[1])).collect())
        .collect()
}

#[requires(cuda_device)]
#[test]
fn gpu_selects_the_candidates_the_host_selects() {
    let mut host = Vec::new();
    for (label, g) in devices() {
        // (n, distinct values): a real vocabulary with few ties; many ties (the radix select
        // runs its passes over the ids); all equal but the specials; a row shorter than k.
        for (n, distinct) in [(128256, 1 << 20), (5000, 6), (3000, 1), (700, 1 << 20)] {
            let rows: Vec<Vec<f32>> = (0..2).map(|s| row(n, s, distinct)).collect();
            for k in [1, 2, 50, 700, 1024] {
                if k > n {
                    continue;
                }
                let got = select(&g, &rows, n, k);
                for (r, (row, got)) in rows.iter().zip(&got).enumerate() {
                    top_candidates(row, k, &mut host);
                    let want: Vec<(u32, u32)> = host.iter().map(|c| (c.0.to_bits(), c.1)).collect();
                    assert_eq!(
                        got, &want,
                        "{label}: n {n} distinct {distinct} k {k} row {r}"
                    );
                }
            }
        }
        // Every logit NaN: argmax and top-k agree with the host (id 0 first).
        let nan = vec![vec![f32::NAN; 300]];
        assert_eq!(select(&g, &nan, 300, 1)[0][0].1, 0, "{label}");
        top_candidates(&nan[0], 3, &mut host);
        let ids: Vec<u32> = select(&g, &nan, 300, 3)[0].iter().map(|c| c.1).collect();
        assert_eq!(ids, [0, 1, 2], "{label}");
        assert!(ops::top_k_rows(&g, 0, 1, 300, 1025, 0).is_err());
    }
}

/// The CUDA model with its candidate selection hidden: every token is picked from the whole
/// logits row read back, as on the CPU.
struct WholeRow(CudaModel);

impl Backend for WholeRow {
    fn forward_view(&mut self, tokens: &[u32], pos: usize, all: bool) -> Result<&[f32]> {
        self.0.forward_view(tokens, pos, all)
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn weight_bytes_per_token(&self) -> u64 {
        self.0.weight_bytes_per_token()
    }
}

#[requires(cuda_device)]
#[test]
fn generation_from_gpu_candidates_equals_generation_from_the_whole_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let tok = TextTokenizer::load(&dir).unwrap();
    let prompt = tok.encode("The quick brown fox", true).unwrap();
    let opts = CudaOptions {
        max_seq: Some(64),
        ..CudaOptions::default()
    };
    for (label, g) in devices() {
        let fresh = |g: Gpu| load_cuda_on(g, &dir, &opts).unwrap();
        let same = same_device(label);
        let mut top = fresh(g);
        let mut whole = WholeRow(fresh(same));
        assert!(top.top_capacity() >= 1000 && whole.top_capacity() == 0);
        let sampling = [
            SamplingParams::greedy(),
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                top_k: 50,
                seed: 7,
            },
            SamplingParams {
                temperature: 1.5,
                top_p: 1.0,
                top_k: 3,
                seed: 8,
            },
        ];
        for p in sampling {
            for min_new in [0, 12] {
                let o = GenerateOptions {
                    max_new_tokens: 12,
                    min_new_tokens: min_new,
                    sampling: p,
                };
                let a = generate(&mut top, &tok, &prompt, &o, None).unwrap();
                let b = generate(&mut whole, &tok, &prompt, &o, None).unwrap();
                eprintln!("{label} {p:?} min_new {min_new}: {:?}", a.token_ids);
                assert_eq!(a.token_ids, b.token_ids, "{label} {p:?} min_new {min_new}");
            }
        }
    }
}
