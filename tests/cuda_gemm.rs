//! The tensor-core GEMM for prefill of 1-byte-code weights (`kernels/gemm.cu`): INT8 W8A8
//! equals the GEMV bit for bit (exact s32 sums, the same epilogue); FP8 per channel follows
//! the W8A8 formula. Shapes with partial 64-row tiles on both sides and a K tail. (FP8_BLOCK:
//! `cuda_fp8_block.rs`.) On the emulator and on a real GPU when present.
#![cfg(feature = "cuda")]

mod cuda_util;

use cuda_util::{devices, CodeCase};
use qforge::numerics::e4m3_to_f32;
use qforge::runtime::cuda::ops::{self, Codes};

const SHAPES: &[(usize, usize, usize)] = &[(17, 40, 96), (64, 64, 128), (100, 130, 208)];

#[test]
fn int8_gemm_equals_the_int8_gemv_bit_for_bit() {
    for (label, g) in devices() {
        for &mnk in SHAPES {
            let c = CodeCase::dual(mnk.0, mnk.1, mnk.2);
            for bias in [false, true] {
                let a = c.run(&g, (ops::gemm_codes, Codes::Int8), bias, mnk);
                let b = c.run(&g, (ops::gemv_codes, Codes::Int8), bias, mnk);
                assert!(a == b, "{label}: {mnk:?} bias {bias}");
            }
        }
    }
}

#[test]
fn fp8_gemm_follows_the_w8a8_formula() {
    for (label, g) in devices() {
        for &(m, n, k) in SHAPES {
            let c = CodeCase::dual(m, n, k);
            for bias in [false, true] {
                let y = c.run(&g, (ops::gemm_codes, Codes::Fp8), bias, (m, n, k));
                for (i, pair) in y.chunks(2).enumerate() {
                    let (r, col) = (i / n, i % n);
                    let (mut dot, mut size) = (0f64, 0f64);
                    for j in 0..k {
                        let p = e4m3_to_f32(c.x[r * k + j]) as f64
                            * e4m3_to_f32(c.w[col * k + j]) as f64;
                        dot += p;
                        size += p.abs();
                    }
                    let s = c.sa[r] as f64 * c.sw[col] as f64;
                    let want = dot * s + if bias { c.bias[col] as f64 } else { 0.0 };
                    let got = half::bf16::from_le_bytes([pair[0], pair[1]]).to_f32() as f64;
                    let tol = want.abs() / 256.0 + size * s * 1e-6;
                    assert!(
                        (got - want).abs() <= tol,
                        "{label}: {m}x{n}x{k} row {r} col {col} bias {bias}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
