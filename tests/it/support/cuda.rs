//! The devices a CUDA test runs its checks on: the CUDA emulator and a real GPU. A test that
//! needs one of them is `#[requires(cuda_device)]` (ignored when the build found neither a
//! C++ compiler nor a CUDA driver); one that needs the emulator is `#[requires(emulator)]`.
//! Where the build found a compiler (or QFORGE_REQUIRE_EMU is set, as in CI), the emulator
//! must work; a real GPU is used when there is one (not in CI).

use super::met;
use qforge::runtime::cuda::gpu::{self, Gpu};
use qforge::runtime::cuda::ops::Codes;

/// The emulator: only for tests marked `#[requires(emulator)]`.
pub fn emulator() -> Gpu {
    Gpu::emulated().unwrap_or_else(|e| panic!("the CUDA emulator is required but: {e}"))
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

/// Every device to run a check on: (label, a fresh `Gpu`); for tests marked
/// `#[requires(cuda_device)]`, so never empty.
pub fn devices() -> Vec<(&'static str, Gpu)> {
    let mut v = Vec::new();
    if met!(emulator) {
        v.push(("emulator", emulator()));
    }
    if let Some(d) = real_gpu() {
        v.push(("gpu", Gpu::new(d).expect("the probed GPU opens")));
    }
    assert!(
        !v.is_empty(),
        "the tests were built with a CUDA driver present, but no GPU opens now"
    );
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

/// `ops::gemv_codes` or `ops::gemm_codes`.
pub type CodeLaunch =
    fn(&Gpu, Codes, (u64, u64, u64), (u64, u64), u64, (usize, usize, usize)) -> qforge::Result<()>;

/// The inputs of one W8A8 GEMV/GEMM launch: weight and activation codes as bytes, their
/// scales, a bias.
pub struct CodeCase {
    pub w: Vec<u8>,
    pub x: Vec<u8>,
    pub sw: Vec<f32>,
    pub sa: Vec<f32>,
    pub bias: Vec<f32>,
}

impl CodeCase {
    /// The BF16 output bytes `[m, n]` of one launch (with the bias or without).
    pub fn run(
        &self,
        g: &Gpu,
        (f, kind): (CodeLaunch, Codes),
        bias: bool,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<u8> {
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let up = |b: &[u8]| g.upload_new(b).unwrap();
        let (wd, xd) = (up(&self.w), up(&self.x));
        let (swd, sad) = (up(&f32_bytes(&self.sw)), up(&f32_bytes(&self.sa)));
        let bd = up(&f32_bytes(&self.bias));
        let y = g.alloc(m * n * 2).unwrap();
        let b = if bias { bd.ptr } else { 0 };
        f(
            g,
            kind,
            (wd.ptr, swd.ptr, b),
            (xd.ptr, sad.ptr),
            y.ptr,
            (m, n, k),
        )
        .unwrap();
        let mut out = vec![0u8; m * n * 2];
        g.download(y.ptr, &mut out).unwrap();
        out
    }
}

/// Codes that are valid as both int8 and E4M3 (no 0x7F / 0xFF: E4M3 NaN).
pub fn dual_codes(len: usize, mul: usize) -> Vec<u8> {
    (0..len)
        .map(|i| match (i * mul % 251) as u8 {
            c if c & 0x7F == 0x7F => 0x3E,
            c => c,
        })
        .collect()
}

impl CodeCase {
    /// A deterministic `[m, k]` × `[n, k]` case whose codes read as int8 or E4M3.
    pub fn dual(m: usize, n: usize, k: usize) -> CodeCase {
        CodeCase {
            w: dual_codes(n * k, 7919),
            x: dual_codes(m * k, 104_729),
            sw: (0..n).map(|r| 1e-3 * (1 + r % 11) as f32).collect(),
            sa: (0..m).map(|r| 0.01 + (r % 7) as f32 * 1e-3).collect(),
            bias: (0..n).map(|r| r as f32 * 0.25 - 3.0).collect(),
        }
    }
}
