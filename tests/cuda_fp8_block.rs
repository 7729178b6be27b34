//! FP8_BLOCK on the GPU runs vLLM's block path, as the CPU does: activations quantized per
//! token and 128-column group (bit for bit against the CPU's `quantize_group_activations`),
//! the block GEMV against the formula, and a whole model against the CPU's block run.
//! On the emulator and on a real GPU when present.
#![cfg(feature = "cuda")]

mod common;
mod cuda_util;

use cuda_util::{devices, same_device, CodeCase, CodeLaunch};
use qforge::checkpoint::Checkpoint;
use qforge::commands::gpu::report::compare;
use qforge::numerics::e4m3_to_f32;
use qforge::runtime::config::ModelConfig;
use qforge::runtime::cpu::linear::quantize_group_activations;
use qforge::runtime::cpu::{CpuModel, CpuOptions};
use qforge::runtime::cuda::device_weights::DWeight;
use qforge::runtime::cuda::gpu::Gpu;
use qforge::runtime::cuda::model::load_cuda_on;
use qforge::runtime::cuda::ops::{self, Codes};
use qforge::runtime::cuda::CudaOptions;
use qforge::runtime::weights::{LinearWeight, Weights};
use qforge::runtime::Backend;
use qforge::synthetic::LlamaShape;

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

/// Rows of BF16-exact values: ordinary, a zero group, a tiny group (the 1e-10 floor), NaN.
fn activations(rows: usize, k: usize) -> Vec<f32> {
    (0..rows * k)
        .map(|i| {
            let (r, c) = (i / k, i % k);
            let v = match (r, c / 128) {
                (1, 0) => 0.0,
                (2, 1) => 1e-12 * (c % 7) as f32,
                (3, 0) if c == 5 => f32::NAN,
                _ => (((i * 7919 + r * 104_729) % 2001) as f32 - 1000.0) / 64.0,
            };
            half::bf16::from_f32(v).to_f32()
        })
        .collect()
}

fn download_f32(g: &Gpu, ptr: u64, n: usize) -> Vec<f32> {
    g.download_f32(ptr, n).unwrap()
}

/// 5 groups a row (a warp each), and 40 (16 warps, taking 2 or 3 groups each).
#[test]
fn group_activations_match_the_cpu_bit_for_bit() {
    for k in [640, 5120] {
        group_activations(5, k);
    }
}

fn group_activations(rows: usize, k: usize) {
    let x = activations(rows, k);
    let groups = k / 128;
    let (mut want_q, mut want_s) = (vec![0f32; x.len()], vec![0f32; rows * groups]);
    quantize_group_activations(&x, 128, &mut want_q, &mut want_s);
    for (label, g) in devices() {
        let xd = g.upload_new(&bf16_bytes(&x)).unwrap();
        let (q, s) = (
            g.alloc(x.len()).unwrap(),
            g.alloc(rows * groups * 4).unwrap(),
        );
        ops::quant_groups(&g, xd.ptr, rows, k, (q.ptr, s.ptr)).unwrap();
        let mut codes = vec![0u8; x.len()];
        g.download(q.ptr, &mut codes).unwrap();
        let got: Vec<u32> = codes.iter().map(|&c| e4m3_to_f32(c).to_bits()).collect();
        let want: Vec<u32> = want_q.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "{label} k {k}: codes");
        let scales = download_f32(&g, s.ptr, rows * groups);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&scales), bits(&want_s), "{label} k {k}: scales");
        assert_eq!(
            scales[groups],
            1e-10 / 448.0,
            "{label} k {k}: the zero group's floor"
        );
    }
}

/// The block GEMV (any rows) and GEMM (prefill) follow `y = Σ_g f32(group sum)·sa·sw`.
#[test]
fn block_gemv_and_gemm_follow_vllms_formula() {
    let (n, k) = (40, 384);
    let groups = k / 128;
    // Codes: every finite E4M3 value but ±448's neighbours at random; no NaN (0x7F / 0xFF).
    let w: Vec<u8> = (0..n * k)
        .map(|i| match (i * 7919 % 251) as u8 {
            c if c & 0x7F == 0x7F => 0x3F,
            c => c,
        })
        .collect();
    let sw: Vec<f32> = (0..n * groups)
        .map(|i| 1e-3 * (1 + i % 13) as f32)
        .collect();
    let bias: Vec<f32> = (0..n).map(|r| r as f32 * 0.25 - 3.0).collect();
    for (label, g) in devices() {
        for m in [1, 5, 16, 20, 17, 70] {
            let x: Vec<u8> = (0..m * k)
                .map(|i| match (i * 104_729 % 253) as u8 {
                    c if c & 0x7F == 0x7F => 0x41,
                    c => c,
                })
                .collect();
            let sa: Vec<f32> = (0..m * groups).map(|i| 0.01 + i as f32 * 1e-3).collect();
            let case = CodeCase {
                w: w.clone(),
                x: x.clone(),
                sw: sw.clone(),
                sa: sa.clone(),
                bias: bias.clone(),
            };
            // The GEMV for any m; the GEMM (prefill) from 17 rows.
            let mut runs = vec![(false, false), (true, false)];
            if m > 16 {
                runs.extend([(false, true), (true, true)]);
            }
            for (with_bias, gemm) in runs {
                let f: CodeLaunch = if gemm {
                    ops::gemm_codes
                } else {
                    ops::gemv_codes
                };
                let raw = case.run(&g, (f, Codes::Fp8Block), with_bias, (m, n, k));
                for (i, pair) in raw.chunks(2).enumerate() {
                    let (r, c) = (i / n, i % n);
                    // Σ_g (exact group sum) · sa · sw, and the size of its terms.
                    let (mut want, mut size) = (0f64, 0f64);
                    for gi in 0..groups {
                        let dot: f64 = (gi * 128..(gi + 1) * 128)
                            .map(|j| {
                                e4m3_to_f32(x[r * k + j]) as f64 * e4m3_to_f32(w[c * k + j]) as f64
                            })
                            .sum();
                        let s = sa[r * groups + gi] as f64 * sw[c * groups + gi] as f64;
                        want += dot * s;
                        let abs: f64 = (gi * 128..(gi + 1) * 128)
                            .map(|j| {
                                (e4m3_to_f32(x[r * k + j]) * e4m3_to_f32(w[c * k + j])).abs() as f64
                            })
                            .sum();
                        size += abs * s;
                    }
                    if with_bias {
                        want += bias[c] as f64;
                    }
                    let got = half::bf16::from_le_bytes([pair[0], pair[1]]).to_f32() as f64;
                    // One BF16 rounding, plus f32 sums of the terms.
                    let tol = want.abs() / 256.0 + size * 1e-6;
                    assert!(
                        (got - want).abs() <= tol,
                        "{label}: m {m} row {r} col {c} bias {with_bias} gemm {gemm}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// A random model quantized with FP8_BLOCK (256/384 columns: whole 128-column groups) runs
/// natively (1 byte per weight) and its logits are within 0.15 relative RMS of the CPU's
/// block run, the limit of the FP8 random-model tests (measured 0.11 on the emulator;
/// FP8_DYNAMIC on the same model: 8.7e-2, W4A16: 1.3e-2): the GPU keeps BF16 intermediates,
/// which flip some FP8 activation codes. Using the first block's scale for every column
/// group gives 1.1.
#[test]
fn fp8_block_models_run_vllms_block_path_like_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = LlamaShape {
        hidden: 256,
        intermediate: 384,
        layers: 2,
        heads: 4,
        kv_heads: 1,
        vocab: 512,
        tied: false,
        rope_factor: 32.0,
    };
    let dir = common::quantize_random(tmp.path(), &shape, "fp8_block");
    let ck = Checkpoint::open(&dir).unwrap();
    let cfg = ModelConfig::from_json(&ck.config).unwrap();
    let w = Weights::load(&ck, &cfg).unwrap();
    assert!(w.layers[0]
        .linears()
        .iter()
        .all(|l| matches!(l.weight, LinearWeight::Fp8Block { .. })));
    let opts = CpuOptions { max_seq: Some(64) };
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 512).collect();
    let want = CpuModel::new(cfg.clone(), w, &opts)
        .unwrap()
        .forward(&ids, 0, true)
        .unwrap();
    let cuda_opts = CudaOptions {
        max_seq: Some(64),
        ..CudaOptions::default()
    };
    for (label, g) in devices() {
        let mut m = load_cuda_on(g, &dir, &cuda_opts).unwrap();
        assert!(matches!(
            m.weights.layers[0].qkv.w,
            DWeight::Fp8Block { .. }
        ));
        let got = m.forward(&ids, 0, true).unwrap();
        let (rel, _, odd) = compare(&got, &want);
        eprintln!("{label}: logits vs the cpu's block run: rel {rel:.3e}");
        assert!(rel <= 0.15 && odd == 0, "{label}: rel {rel:.3e}");
        // Decode steps (the GEMV on one row) agree with the prefill of the same rows.
        let mut dec = load_cuda_on(same_device(label), &dir, &cuda_opts).unwrap();
        dec.forward(&ids[..20], 0, false).unwrap();
        for (p, &id) in ids.iter().enumerate().skip(20) {
            let step = dec.forward(&[id], p, false).unwrap();
            let (rel, _, odd) = compare(&step, &got[p * 512..(p + 1) * 512]);
            assert!(
                rel <= 0.15 && odd == 0,
                "{label}: decode at {p}: rel {rel:.3e}"
            );
        }
    }
}
