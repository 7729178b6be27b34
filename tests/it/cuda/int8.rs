//! W8A8-INT8 on the GPU, bit for bit against the CPU's vLLM formulas: the per-token int8
//! activation quantization (`quant_rows`, also fused into the norm and SiLU kernels) and the
//! int8 GEMV with its exact s32 sums and `bf16(s_a · (s_w · f32(sum)))` epilogue. On the
//! emulator and on a real GPU when present.

use crate::support::cuda::{devices, CodeCase, CodeLaunch};
use crate::support::requires;
use qforge::runtime::cpu::linear::quantize_int8_activations;
use qforge::runtime::cuda::gpu::Gpu;
use qforge::runtime::cuda::ops::{self, ActOut, Codes};

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

fn f32s(g: &Gpu, ptr: u64, n: usize) -> Vec<f32> {
    g.download_f32(ptr, n).unwrap()
}

/// Rows with ties at .5 after scaling, a zero row, NaN, and ordinary values; BF16-exact.
fn activation_rows(k: usize) -> Vec<f32> {
    let mut x = Vec::new();
    for r in 0..6 {
        for c in 0..k {
            let v = match r {
                0 => 0.0,
                // amax 127: codes are the values themselves, .5 ties round to even.
                1 => [127.0, 0.5, 1.5, -2.5, -0.5, 3.0][c % 6],
                2 if c == 3 => f32::NAN,
                _ => (((c * 7919 + r * 104729) % 2001) as f32 - 1000.0) / 64.0,
            };
            x.push(half::bf16::from_f32(v).to_f32());
        }
    }
    x
}

#[requires(cuda_device)]
#[test]
fn int8_activations_match_the_cpu_bit_for_bit() {
    let k = 96;
    let x = activation_rows(k);
    let rows = x.len() / k;
    let (mut want_q, mut want_s) = (vec![0i8; x.len()], vec![0f32; rows]);
    quantize_int8_activations(&x, k, &mut want_q, &mut want_s);
    for (label, g) in devices() {
        let xb = g.upload_new(&bf16_bytes(&x)).unwrap();
        let (q, s) = (g.alloc(x.len()).unwrap(), g.alloc(rows * 4).unwrap());
        ops::quant_rows(&g, xb.ptr, rows, k, ActOut::Int8 { q: q.ptr, s: s.ptr }).unwrap();
        let mut codes = vec![0u8; x.len()];
        g.download(q.ptr, &mut codes).unwrap();
        let got: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
        assert_eq!(got, want_q, "{label}: codes");
        let scales = f32s(&g, s.ptr, rows);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&scales), bits(&want_s), "{label}: scales");
        assert_eq!(
            &got[k..k + 6],
            &[127, 0, 2, -2, 0, 3],
            "{label}: ties to even"
        );
    }
}

#[requires(cuda_device)]
#[test]
fn int8_gemv_matches_the_cpu_formula_bit_for_bit() {
    let (n, k) = (40, 96);
    let w: Vec<i8> = (0..n * k)
        .map(|i| ((i * 7919 % 255) as i32 - 127) as i8)
        .collect();
    let sw: Vec<f32> = (0..n).map(|r| 0.001 + r as f32 * 1e-4).collect();
    let bias: Vec<f32> = (0..n).map(|r| r as f32 * 0.25 - 3.0).collect();
    for (label, g) in devices() {
        for m in [1, 5, 16, 20] {
            let x: Vec<i8> = (0..m * k)
                .map(|i| ((i * 104729 % 253) as i32 - 126) as i8)
                .collect();
            let sa: Vec<f32> = (0..m).map(|r| 0.01 + r as f32 * 1e-3).collect();
            let case = CodeCase {
                w: w.iter().map(|&c| c as u8).collect(),
                x: x.iter().map(|&c| c as u8).collect(),
                sw: sw.clone(),
                sa: sa.clone(),
                bias: bias.clone(),
            };
            for with_bias in [false, true] {
                let launch = (ops::gemv_codes as CodeLaunch, Codes::Int8);
                let raw = case.run(&g, launch, with_bias, (m, n, k));
                for (i, pair) in raw.chunks(2).enumerate() {
                    let (r, c) = (i / n, i % n);
                    let sum: i32 = (0..k)
                        .map(|j| x[r * k + j] as i32 * w[c * k + j] as i32)
                        .sum();
                    let mut v = sa[r] * (sw[c] * sum as f32);
                    if with_bias {
                        v += bias[c];
                    }
                    let want = half::bf16::from_f32(v).to_bits();
                    let got = u16::from_le_bytes([pair[0], pair[1]]);
                    assert_eq!(got, want, "{label}: m {m} row {r} col {c} bias {with_bias}");
                }
            }
        }
    }
}
