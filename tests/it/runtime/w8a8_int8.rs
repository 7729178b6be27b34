//! The W8A8 (INT8) preset on the CPU: every Linear of the g128-W8A8 fixture keeps its int8
//! codes and runs vLLM's W8A8-INT8 arithmetic, checked bit for bit against a reference
//! written here in f64 from vLLM's definition (`dynamic_scaled_int8_quant_kernel` then
//! `cutlass_scaled_mm` with the `ScaledEpilogue`):
//! `s_a = f32(amax / 127)`, `q = sat_i8(rne(f32(x · f32(127 / amax))))`,
//! `y = f32(s_a · f32(s_w · Σ q·q_w))`. Every f32 operation is done in f64 and rounded once to
//! f32, which gives the same result as the f32 operation for `+ − × ÷` (f64 has more than
//! 2·24 + 2 bits), and the sum is exact in i64. Rows: all zeros, N(0, 1), N(0, 1) with a 300
//! outlier, exact .5 ties after scaling, and values where vLLM's multiply by `127 / amax`
//! rounds differently from a division by `s_a`.

use crate::support;

use qforge::runtime::cpu::linear::run_linear;
use qforge::runtime::cpu::load_cpu;
use qforge::runtime::weights::{Linear, LinearWeight};

/// Deterministic N(0, 1) values (xorshift64 + Box–Muller).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

/// `amax = 127` makes the multiplier 127/amax exactly 1, so `k + 0.5` stays a tie.
fn ties(k: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..k)
        .map(|i| ((i + 123) % 253) as f32 - 126.0 + 0.5)
        .collect();
    x[0] = 127.0;
    x
}

/// A row of amax 3 (127/3 is inexact) whose other values sit where vLLM's `x · f32(127/amax)`
/// and the textbook `x / f32(amax/127)` round to different integers; returns the row and how
/// many such values it holds.
fn reciprocal_ties(k: usize) -> (Vec<f32>, usize) {
    let amax = 3.0f32;
    let (inv, s) = (127.0 / amax, amax / 127.0);
    let mut found = Vec::new();
    for j in 0..127 {
        let mut x = (j as f32 + 0.5) / inv;
        for _ in 0..8 {
            x = f32::from_bits(x.to_bits() - 4);
            for step in 0..8u32 {
                let v = f32::from_bits(x.to_bits() + step);
                if (v * inv).round_ties_even() != (v / s).round_ties_even() {
                    found.push(v);
                }
            }
        }
    }
    let n = found.len();
    let mut x: Vec<f32> = (0..k).map(|i| found[i % n.max(1)]).collect();
    x[0] = amax;
    (x, n.min(k - 1))
}

fn inputs(k: usize) -> Vec<Vec<f32>> {
    let mut outlier = normal(k, 7);
    outlier[k / 3] = 300.0;
    let (recip, n) = reciprocal_ties(k);
    assert!(n > 0, "no value tells x·(127/amax) from x/s_a");
    vec![vec![0.0; k], normal(k, 1), outlier, ties(k), recip]
}

/// The reference: (scale, codes, outputs) of one input row.
fn reference(lin: &Linear, x: &[f32]) -> (f32, Vec<i32>, Vec<f32>) {
    let LinearWeight::Int8 { codes, scales } = &lin.weight else {
        panic!("{}: not INT8", lin.name);
    };
    let amax = x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
    let s_a = (amax / 127.0) as f32;
    let inv = (127.0 / amax) as f32 as f64; // +inf for an all-zero row
    let q: Vec<i32> = x
        .iter()
        .map(|&v| {
            let p = (v as f64 * inv) as f32 as f64;
            match p.is_nan() {
                true => 0, // 0 · inf: PTX cvt.rni.sat gives 0
                false => p.round_ties_even().clamp(-128.0, 127.0) as i32,
            }
        })
        .collect();
    let y = (0..lin.rows)
        .map(|n| {
            let w = &codes[n * lin.cols..(n + 1) * lin.cols];
            let acc: i64 = w.iter().zip(&q).map(|(&a, &b)| a as i64 * b as i64).sum();
            let acc = acc as f32 as f64;
            let t = (scales[n] as f64 * acc) as f32 as f64;
            (s_a as f64 * t) as f32
        })
        .collect();
    (s_a, q, y)
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn w8a8_linears_match_the_vllm_reference_bit_for_bit() {
    for fixture in ["g128-W8A8", "unaligned-W8A8"] {
        check_fixture(fixture);
    }
}

fn check_fixture(fixture: &str) {
    let dir = support::shared().join("fixtures/schemes").join(fixture);
    let m = load_cpu(&dir).unwrap();
    let linears: Vec<&Linear> = m.weights.layers.iter().flat_map(|l| l.linears()).collect();
    assert_eq!(linears.len(), 14);
    for lin in linears {
        assert!(lin.is_int8(), "{} should stay INT8", lin.name);
        let rows = inputs(lin.cols);
        let x: Vec<f32> = rows.concat();
        let got = run_linear(lin, &x).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let (s, q, y) = reference(lin, row);
            let at = |what: &str| format!("{} row {r} {what}", lin.name);
            assert!(same_bits(got.x_scale[r], s), "{}", at("x_scale"));
            let gq = &got.x_q[r * lin.cols..(r + 1) * lin.cols];
            let bad_q = gq.iter().zip(&q).position(|(&a, &b)| a != b as f32);
            assert_eq!(bad_q, None, "{}", at("x_q"));
            let gy = &got.y[r * lin.rows..(r + 1) * lin.rows];
            let bad_y = gy.iter().zip(&y).position(|(&a, &b)| !same_bits(a, b));
            assert_eq!(bad_y, None, "{}", at("y"));
        }
        // The edge rows pinned literally: zeros quantize to scale 0, codes 0, outputs +0;
        // ties round half to even (-1.5 → -2, ±0.5 → 0, 1.5 → 2, 2.5 → 2, 3.5 → 4).
        assert_eq!(got.x_scale[0], 0.0);
        assert!(got.y[..lin.rows].iter().all(|&v| v.to_bits() == 0));
        let tie = &got.x_q[3 * lin.cols..3 * lin.cols + 7];
        assert_eq!(tie, [127.0, -2.0, 0.0, 0.0, 2.0, 2.0, 4.0], "{}", lin.name);
    }
}

/// The quantized activations cost little on a Gaussian row: the W8A8 output stays within 3%
/// (relative Frobenius) of the exact product with the dequantized weights, on the layers the
/// fixture does not edit — a sanity check that the scales are applied, not just consistent.
#[test]
fn w8a8_is_close_to_the_exact_product() {
    let dir = support::shared().join("fixtures/schemes/g128-W8A8");
    let m = load_cpu(&dir).unwrap();
    for lin in m.weights.layers[0].linears() {
        let LinearWeight::Int8 { codes, scales } = &lin.weight else {
            panic!("{}: not INT8", lin.name);
        };
        let x = normal(lin.cols, 3);
        let got = run_linear(lin, &x).unwrap().y;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (n, &g) in got.iter().enumerate() {
            let w = &codes[n * lin.cols..(n + 1) * lin.cols];
            let exact: f64 = w
                .iter()
                .zip(&x)
                .map(|(&c, &v)| c as f64 * scales[n] as f64 * v as f64)
                .sum();
            num += (g as f64 - exact).powi(2);
            den += exact * exact;
        }
        let rel = (num / den).sqrt();
        assert!(
            rel > 0.0 && rel < 0.03,
            "{}: relative error {rel}",
            lin.name
        );
    }
}
