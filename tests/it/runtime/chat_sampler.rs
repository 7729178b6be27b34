//! The sampler: greedy is argmax, seeded sampling is reproducible, top-k/top-p filter as
//! transformers does, and the temperature shapes the distribution.

use qforge::runtime::sampler::{argmax, top_candidates, Sampler, SamplingParams};
use std::cmp::Ordering;

fn params(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        top_k,
        seed,
    }
}

/// Deterministic, varied logits (an LCG), like a real vocabulary row.
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 8.0 - 4.0
        })
        .collect()
}

#[test]
fn argmax_first_max_wins_and_skips_nan() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN, 0.5, 0.5]), 3);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY, -1e30]), 2);
    assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    assert_eq!(argmax(&[f32::NAN, f32::INFINITY]), 1);
}

#[test]
fn greedy_equals_argmax() {
    for seed in 0..20 {
        let row = logits(49152, seed);
        let want = argmax(&row);
        for p in [
            SamplingParams::greedy(),
            params(0.0, 0.9, 50, seed),
            params(0.7, 1.0, 1, seed),  // top_k = 1
            params(1.5, 1e-6, 0, seed), // top_p tiny keeps only the best token
            params(1.0, 1e-6, 40, seed),
        ] {
            assert_eq!(Sampler::new(p, row.len()).sample(&row), want, "{p:?}");
        }
    }
}

#[test]
fn fixed_seed_is_reproducible() {
    let rows: Vec<Vec<f32>> = (0..64).map(|s| logits(4096, s)).collect();
    let run = |seed: u64, top_p: f32, top_k: usize| -> Vec<u32> {
        let mut s = Sampler::new(params(0.8, top_p, top_k, seed), 4096);
        rows.iter().map(|r| s.sample(r)).collect()
    };
    for (top_p, top_k) in [(1.0, 0), (0.9, 0), (1.0, 50), (0.95, 40)] {
        let a = run(42, top_p, top_k);
        assert_eq!(a, run(42, top_p, top_k), "same seed, same tokens");
        assert_ne!(a, run(43, top_p, top_k), "another seed, other tokens");
    }
}

#[test]
fn top_k_and_top_p_restrict_the_candidates() {
    let row = logits(1000, 7);
    let mut order: Vec<u32> = (0..1000).collect();
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    let mut s = Sampler::new(params(5.0, 1.0, 3, 1), row.len());
    for _ in 0..2000 {
        assert!(order[..3].contains(&s.sample(&row)));
    }
    // probs ∝ [0.5, 0.3, 0.15, 0.05]: top_p 0.7 keeps the first two (mass before the third
    // is 0.8 >= 0.7), top_p 0.81 keeps three.
    let row: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    for (top_p, allowed) in [(0.7, 2), (0.81, 3)] {
        let mut s = Sampler::new(params(1.0, top_p, 0, 3), 4);
        let mut seen = [0usize; 4];
        for _ in 0..5000 {
            seen[s.sample(&row) as usize] += 1;
        }
        assert!(
            seen[allowed..].iter().all(|&c| c == 0),
            "top_p {top_p}: {seen:?}"
        );
        assert!(
            seen[..allowed].iter().all(|&c| c > 0),
            "top_p {top_p}: {seen:?}"
        );
    }
}

#[test]
fn temperature_shapes_the_distribution() {
    let p = [0.5f64, 0.3, 0.15, 0.05];
    let row: Vec<f32> = p.iter().map(|x| x.ln() as f32).collect();
    let draws = 100_000;
    for temperature in [1.0f32, 0.5, 2.0] {
        let mut s = Sampler::new(params(temperature, 1.0, 0, 1234), 4);
        let mut counts = [0usize; 4];
        for _ in 0..draws {
            counts[s.sample(&row) as usize] += 1;
        }
        // softmax(log p / T) ∝ p^(1/T)
        let w: Vec<f64> = p
            .iter()
            .map(|x| x.powf(1.0 / f64::from(temperature)))
            .collect();
        let z: f64 = w.iter().sum();
        for i in 0..4 {
            let want = w[i] / z;
            let got = counts[i] as f64 / draws as f64;
            // 5 standard deviations of a binomial proportion: fixed seed, so this is exact
            // and deterministic, but it would also hold for almost any seed.
            let tol = 5.0 * (want * (1.0 - want) / draws as f64).sqrt();
            assert!(
                (got - want).abs() < tol,
                "T={temperature} token {i}: {got} vs {want}"
            );
        }
    }
}

/// A row of 1000 logits from a few values (so they tie), with NaN, ±inf and ±0.
fn tied_row(seed: u64) -> Vec<f32> {
    let values = [
        f32::NAN,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        1.5,
        -2.25,
        3.0,
        f32::INFINITY,
    ];
    let mut s = seed;
    (0..1000)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            values[(s >> 61) as usize]
        })
        .collect()
}

/// The order `top_candidates` promises, spelled out: larger value first (-0 equals +0);
/// NaN below -inf; then the lower id.
fn reference_order(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    let class = |x: f32| !x.is_nan();
    class(b.0)
        .cmp(&class(a.0))
        .then_with(|| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal))
        .then(a.1.cmp(&b.1))
}

#[test]
fn top_candidates_are_the_best_logits_in_a_fixed_order() {
    let mut got = Vec::new();
    for seed in 0..8 {
        for row in [tied_row(seed), logits(1000, seed)] {
            let mut all: Vec<(f32, u32)> = row.iter().copied().zip(0..).collect();
            all.sort_by(reference_order);
            for k in [1, 2, 7, 50, 999, 1000, 1200] {
                top_candidates(&row, k, &mut got);
                let want = &all[..k.min(row.len())];
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(want) {
                    assert_eq!(
                        (g.0.to_bits(), g.1),
                        (w.0.to_bits(), w.1),
                        "seed {seed} k {k}"
                    );
                }
                assert_eq!(got[0].1, argmax(&row), "the best is argmax's pick");
            }
        }
    }
    top_candidates(&[-1.0, -0.0, f32::NAN, 0.0], 2, &mut got);
    assert_eq!(
        got.iter().map(|c| c.1).collect::<Vec<_>>(),
        [1, 3],
        "-0 ties +0"
    );
    top_candidates(&[f32::NAN, f32::NAN, f32::NEG_INFINITY], 2, &mut got);
    assert_eq!(got.iter().map(|c| c.1).collect::<Vec<_>>(), [2, 0]);
}

/// The GPU hands the sampler only the best logits; the tokens must be the ones sampling the
/// whole row gives, draw for draw.
#[test]
fn sampling_from_the_best_logits_equals_sampling_the_row() {
    let mut rows: Vec<Vec<f32>> = (0..48).map(|s| logits(4096, s)).collect();
    rows.extend((0..8).map(|s| {
        let mut r = tied_row(s);
        r.resize(4096, -1.0);
        r
    }));
    rows.push(vec![f32::NAN; 4096]);
    rows.push(vec![f32::NEG_INFINITY; 4096]);
    let mut top = Vec::new();
    for p in [
        SamplingParams::greedy(),
        params(0.8, 1.0, 50, 3),
        params(0.6, 0.95, 50, 4),
        params(1.3, 0.5, 2, 5),
        params(0.7, 1.0, 1, 6),
        params(2.0, 0.9, 1000, 7),
    ] {
        let mut whole = Sampler::new(p, 4096);
        let mut best = Sampler::new(p, 4096);
        let k = whole.candidates_needed(4096).unwrap();
        assert_eq!(k, if p.is_greedy() { 1 } else { p.top_k });
        for (i, row) in rows.iter().enumerate() {
            // More candidates than needed (as with masked EOS ids): the extra ones are unused.
            top_candidates(row, k + 3, &mut top);
            assert_eq!(whole.sample(row), best.sample_top(&top), "{p:?} row {i}");
        }
    }
    let all = Sampler::new(params(0.8, 0.9, 0, 1), 4096);
    assert_eq!(
        all.candidates_needed(4096),
        None,
        "no top-k: every logit counts"
    );
}

#[test]
fn nan_and_masked_logits_are_never_sampled() {
    let row = [f32::NAN, 0.0, f32::NEG_INFINITY, 0.0, f32::NAN];
    let mut s = Sampler::new(params(1.0, 1.0, 0, 9), row.len());
    let mut seen = [0usize; 5];
    for _ in 0..1000 {
        seen[s.sample(&row) as usize] += 1;
    }
    assert_eq!((seen[0], seen[2], seen[4]), (0, 0, 0));
    assert!(seen[1] > 400 && seen[3] > 400, "{seen:?}");
}

#[test]
fn defaults_from_generation_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = SamplingParams::from_generation_config(dir.path()).unwrap();
    assert_eq!(
        p,
        params(1.0, 1.0, 50, 0),
        "transformers' defaults without a file"
    );
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [1, 2]}"#,
    )
    .unwrap();
    let p = SamplingParams::from_generation_config(dir.path()).unwrap();
    assert_eq!(p, params(0.6, 0.9, 50, 0));
    assert!(!p.is_greedy() && SamplingParams::default().is_greedy());
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"top_p": 1.5}"#,
    )
    .unwrap();
    let err = SamplingParams::from_generation_config(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("top_p"),
        "{err}"
    );
}
