//! The devices a CUDA test runs its checks on: the CUDA emulator (skipped without a C++
//! compiler, required with QFORGE_REQUIRE_EMU=1 as in CI) and a real GPU (skipped without a
//! driver or a capable GPU, as in CI).
#![allow(dead_code)]

use qforge::runtime::cuda::gpu::{self, Gpu};

/// The emulator, or `None` after saying why (a panic when QFORGE_REQUIRE_EMU is set).
pub fn emulator() -> Option<Gpu> {
    match Gpu::emulated() {
        Ok(g) => Some(g),
        Err(e) if std::env::var_os("QFORGE_REQUIRE_EMU").is_some() => {
            panic!("QFORGE_REQUIRE_EMU is set but: {e}")
        }
        Err(e) => {
            eprintln!("emulator skipped: {e}");
            None
        }
    }
}

/// A real GPU's ordinal, or `None` after saying why.
pub fn real_gpu() -> Option<usize> {
    if !gpu::driver_present() {
        eprintln!("gpu skipped: no CUDA driver");
        return None;
    }
    match gpu::probe(0) {
        Ok(_) => Some(0),
        Err(e) => {
            eprintln!("gpu skipped: {e}");
            None
        }
    }
}

/// Every device to run a check on: (label, a fresh `Gpu`).
pub fn devices() -> Vec<(&'static str, Gpu)> {
    let mut v = Vec::new();
    if let Some(g) = emulator() {
        v.push(("emulator", g));
    }
    if let Some(d) = real_gpu() {
        v.push(("gpu", Gpu::new(d).expect("the probed GPU opens")));
    }
    v
}

/// A fresh `Gpu` of the kind `label` (from [`devices`]) names.
pub fn same_device(label: &str) -> Gpu {
    if label.starts_with("emulator") {
        Gpu::emulated().unwrap()
    } else {
        Gpu::new(0).unwrap()
    }
}
