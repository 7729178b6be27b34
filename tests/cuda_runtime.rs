//! The CUDA backend on a real GPU: a tiny fixture through CUDA and the CPU reference. Skips
//! (prints "skipped: ...") on machines without a CUDA driver or a capable GPU, such as CI.
#![cfg(feature = "cuda")]

mod common;

use qforge::runtime::cpu::load_cpu;
use qforge::runtime::cuda::forward::{load_cuda, CudaOptions};
use qforge::runtime::cuda::gpu;
use qforge::runtime::cuda::report::compare;

fn gpu_or_skip() -> bool {
    if !gpu::driver_present() {
        eprintln!("skipped: no CUDA driver");
        return false;
    }
    match gpu::probe(0) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// Residual streams up to layer 1's attention (the meaningful part of the tiny fixtures)
/// agree with the CPU within the selftest's tolerance.
#[test]
fn tiny_fixture_matches_cpu() {
    if !gpu_or_skip() {
        return;
    }
    let dir = common::shared().join("fixtures/tiny-llama3-fp8-dynamic");
    let ids: Vec<u32> = (0..37).map(|i| (i * 131 + 7) % 49152).collect();
    let (_, cpu) = load_cpu(&dir)
        .unwrap()
        .forward_trace(&ids, 0, true)
        .unwrap();
    let mut g = load_cuda(&dir, &CudaOptions::default()).unwrap();
    let (_, gt) = g.forward_trace(&ids, 0, true).unwrap();
    for key in [
        "residual_after_attn.0",
        "residual_after_mlp.0",
        "residual_after_attn.1",
    ] {
        let (rel, max, odd) = compare(&gt[key], &cpu[key]);
        assert!(
            rel <= 5e-2 && odd == 0,
            "{key}: rel {rel:.3e} max {max:.3e} odd {odd}"
        );
    }
}

/// Without a driver, asking for the GPU is an error (not a panic) that says what is missing.
#[test]
fn no_driver_is_an_error() {
    if gpu::driver_present() {
        eprintln!("skipped: a CUDA driver is present");
        return;
    }
    let e = gpu::probe(0).unwrap_err().to_string();
    assert!(e.contains("no CUDA driver"), "{e}");
    let dir = common::shared().join("fixtures/tiny-llama3-fp8-dynamic");
    let e = load_cuda(&dir, &CudaOptions::default())
        .err()
        .expect("no GPU here")
        .to_string();
    assert!(e.contains("no CUDA driver"), "{e}");
}
