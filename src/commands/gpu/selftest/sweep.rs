//! The gemv-sweep stage: the decode GEMV time of every tuning build of `kernels/gemv.cu`
//! (`kernels::GEMV_SWEEP`) next to the default build's, on a 70B's four Linears (FP8, one
//! activation row), as bytes read per second; and each build's outputs against the default
//! build's. So one GPU run says which build a later session should make the default. Beside
//! them, the default build reading the same bytes as INT8 codes (tensor cores take s8
//! natively on Hopper, E4M3 only through f16 conversions in `mma.sync`). On the emulator:
//! the first build on a small shape (its times mean nothing).

use super::super::report::Report;
use crate::runtime::cuda::gpu::{DBuf, Gpu};
use crate::runtime::cuda::kernels::{GemvVariant, GEMV_DEFAULT, GEMV_SWEEP};
use crate::runtime::cuda::ops::{self, Codes};
use crate::runtime::cuda::tune::off_by_more_than_an_ulp;
use crate::Result;
use std::time::Instant;

/// A 70B's decode Linears: (name, rows, columns).
const SHAPES_70B: &[(&str, usize, usize)] = &[
    ("qkv_proj", 10_240, 8_192),
    ("o_proj", 8_192, 8_192),
    ("gate_up_proj", 57_344, 8_192),
    ("down_proj", 8_192, 28_672),
];

/// Bytes of weights a timing cycles through: well past an H200's 50 MB L2, so that each
/// launch streams its weights from HBM as a decode step does.
const CYCLED_BYTES: usize = 256 << 20;

/// Random FP8 weights (identical copies, cycled) and one activation row of one shape, with
/// the output buffer.
struct Case {
    w: Vec<DBuf>,
    sw: DBuf,
    x: DBuf,
    sa: DBuf,
    y: DBuf,
    n: usize,
    k: usize,
}

impl Case {
    fn new(g: &Gpu, n: usize, k: usize) -> Result<Case> {
        let copies = match g.is_emulated() {
            true => 1,
            false => CYCLED_BYTES.div_ceil(n * k),
        };
        let w = (0..copies)
            .map(|_| g.alloc(n * k))
            .collect::<Result<Vec<_>>>()?;
        for c in &w {
            ops::fill_fp8_normal(g, c.ptr, n * k, 11)?;
        }
        let (sw, x, sa, y) = (g.alloc(n * 4)?, g.alloc(k)?, g.alloc(4)?, g.alloc(n * 2)?);
        ops::fill_f32(g, sw.ptr, n, 1.0 / 512.0)?;
        ops::fill_fp8_normal(g, x.ptr, k, 12)?;
        ops::fill_f32(g, sa.ptr, 1, 1.0 / 64.0)?;
        Ok(Case {
            w,
            sw,
            x,
            sa,
            y,
            n,
            k,
        })
    }

    /// One GEMV on weight copy `i` (modulo the copies), the codes read as `codes`.
    fn run(&self, g: &Gpu, codes: Codes, i: usize) -> Result<()> {
        let w = (self.w[i % self.w.len()].ptr, self.sw.ptr, 0);
        ops::gemv_codes(
            g,
            codes,
            w,
            (self.x.ptr, self.sa.ptr),
            self.y.ptr,
            (1, self.n, self.k),
        )
    }

    /// Seconds per launch under build `v`, the codes read as `codes` (the mean of `reps`
    /// after one warm-up), and the outputs as f32.
    fn time(&self, g: &Gpu, v: GemvVariant, codes: Codes, reps: usize) -> Result<(f64, Vec<f32>)> {
        g.set_gemv(v)?;
        self.run(g, codes, 0)?;
        g.sync()?;
        let t0 = Instant::now();
        for i in 1..=reps {
            self.run(g, codes, i)?;
        }
        g.sync()?;
        let t = t0.elapsed().as_secs_f64() / reps as f64;
        let y = g.download_bf16(self.y.ptr, self.n)?;
        g.set_gemv(GEMV_DEFAULT)?;
        Ok((t, y))
    }
}

/// The stage (see the module docs); the default build is set again at the end, also after
/// an error.
pub fn gemv_sweep(g: &Gpu, r: &mut Report) -> Result<()> {
    let res = sweep(g, r);
    let reset = g.set_gemv(GEMV_DEFAULT);
    res.and(reset)
}

fn sweep(g: &Gpu, r: &mut Report) -> Result<()> {
    let (shapes, builds, reps) = match g.is_emulated() {
        true => (&[("small", 64, 1_024)][..], &GEMV_SWEEP[..1], 1),
        false => (SHAPES_70B, GEMV_SWEEP, 20),
    };
    g.prepare_gemv(builds);
    for &(name, n, k) in shapes {
        let case = Case::new(g, n, k)?;
        let bytes = (n * k + n * 4 + k) as f64;
        let (t0, y0) = case.time(g, GEMV_DEFAULT, Codes::Fp8, reps)?;
        let check = format!("{name} {n}x{k}, m 1, fp8, {GEMV_DEFAULT} (default)");
        let value = format!("{:.1} us, {:.0} GB/s", t0 * 1e6, bytes / t0 / 1e9);
        r.info("gemv-sweep", &check, value);
        // The same bytes as INT8 codes: Hopper's tensor cores take s8 natively but not E4M3
        // in `mma.sync` (ptxas converts each FP8 fragment to f16 first, kernels/mma.cuh), so
        // an FP8 GEMV well below the INT8 one is bound by those conversions, not by HBM.
        let (ti, _) = case.time(g, GEMV_DEFAULT, Codes::Int8, reps)?;
        let value = format!(
            "{:.1} us, {:.0} GB/s: fp8 at {:.2}x its speed",
            ti * 1e6,
            bytes / ti / 1e9,
            ti / t0
        );
        let check = format!("{name} {n}x{k}, m 1, int8 codes, {GEMV_DEFAULT} (default)");
        r.info("gemv-sweep", &check, value);
        for &v in builds {
            let (t, y) = case.time(g, v, Codes::Fp8, reps)?;
            let check = format!("{name} {n}x{k}, m 1, fp8, {v}");
            let gbps = bytes / t / 1e9;
            let value = format!(
                "{:.1} us, {gbps:.0} GB/s, {:.2}x the default's speed",
                t * 1e6,
                t0 / t
            );
            r.info("gemv-sweep", &check, value);
            let off = off_by_more_than_an_ulp(&y, &y0) as f64;
            r.at_most(
                "gemv-sweep",
                &format!("{check}: outputs > 1 bf16 ulp off the default's"),
                off,
                0.0,
            );
        }
    }
    Ok(())
}
