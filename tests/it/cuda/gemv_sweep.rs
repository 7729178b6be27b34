//! gemv.cu's tuning builds (`kernels::GEMV_SWEEP`, timed by `gpu selftest`'s gemv-sweep stage)
//! compute what the default build computes: INT8 bit for bit (exact s32 sums), FP8 within one
//! BF16 rounding, BF16 within f32 reassociation (the builds split K over warps and steps
//! differently). The emulator builds one variant, with both knobs changed; a real GPU, when
//! present, checks every one.

use crate::support::cuda::{devices, CodeCase};
use crate::support::requires;
use qforge::runtime::cuda::gpu::Gpu;
use qforge::runtime::cuda::kernels::{GemvVariant, GEMV_DEFAULT, GEMV_EMULATED, GEMV_SWEEP};
use qforge::runtime::cuda::ops::{self, Codes};

/// K of 13 and 65 chunks: tails for every split.
const SHAPES: &[(usize, usize, usize)] = &[(1, 40, 832), (5, 33, 4160), (16, 40, 832)];

fn bf16(pair: &[u8]) -> f32 {
    half::bf16::from_bits(u16::from_le_bytes([pair[0], pair[1]])).to_f32()
}

/// The BF16 GEMV with f32 outputs (the logits' path).
fn dense(g: &Gpu, (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    let vals = |len: usize, mul: usize| -> Vec<u8> {
        (0..len)
            .flat_map(|i| {
                let v = ((i * mul % 509) as f32 - 254.0) / 256.0;
                half::bf16::from_f32(v).to_bits().to_le_bytes()
            })
            .collect()
    };
    let (w, x) = (
        g.upload_new(&vals(n * k, 7919)).unwrap(),
        g.upload_new(&vals(m * k, 31)).unwrap(),
    );
    let y = g.alloc(m * n * 4).unwrap();
    ops::gemv_bf16(g, (w.ptr, 0), x.ptr, (y.ptr, true), (m, n, k)).unwrap();
    g.download_f32(y.ptr, m * n).unwrap()
}

/// Every GEMV of build `v` against the default build's, on device `g`.
fn check_variant(label: &str, g: &Gpu, v: GemvVariant) {
    for &mnk in SHAPES {
        let c = CodeCase::dual(mnk.0, mnk.1, mnk.2);
        let base_i8 = c.run(g, (ops::gemv_codes, Codes::Int8), true, mnk);
        let base_f8 = c.run(g, (ops::gemv_codes, Codes::Fp8), true, mnk);
        let base_bf = dense(g, mnk);
        g.set_gemv(v).unwrap();
        assert_eq!(g.gemv(), v);
        assert_eq!(g.gemv_threads("gemv_fp8"), 32 * v.warps, "{label}");
        assert_eq!(
            g.gemv_threads("gemv_fp8_block"),
            128,
            "{label}: not in the build"
        );
        let i8 = c.run(g, (ops::gemv_codes, Codes::Int8), true, mnk);
        assert!(i8 == base_i8, "{label} {v}: int8 {mnk:?} differs");
        let f8 = c.run(g, (ops::gemv_codes, Codes::Fp8), true, mnk);
        for (i, (a, b)) in f8.chunks(2).zip(base_f8.chunks(2)).enumerate() {
            let (a, b) = (bf16(a), bf16(b));
            let ulp = a.abs().max(b.abs()) / 128.0;
            assert!(
                (a - b).abs() <= ulp,
                "{label} {v}: fp8 {mnk:?} [{i}] {a} vs {b}"
            );
        }
        let bf = dense(g, mnk);
        let top = base_bf.iter().fold(0f32, |t, v| t.max(v.abs()));
        for (i, (a, b)) in bf.iter().zip(&base_bf).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * top,
                "{label} {v}: bf16 {mnk:?} [{i}] {a} vs {b}"
            );
        }
        g.set_gemv(GEMV_DEFAULT).unwrap();
        assert_eq!(g.gemv_threads("gemv_fp8"), 128, "{label}");
    }
}

#[requires(cuda_device)]
#[test]
fn gemv_builds_compute_what_the_default_build_computes() {
    for (label, g) in devices() {
        let builds = if g.is_emulated() {
            GEMV_EMULATED
        } else {
            GEMV_SWEEP
        };
        for &v in builds {
            check_variant(label, &g, v);
        }
    }
}

/// A graph captured under a build replays that build's kernels, whatever is set at replay.
#[requires(cuda_device)]
#[test]
fn captured_launches_keep_their_build() {
    let v = GEMV_SWEEP[0];
    assert_eq!(
        v.warps, 8,
        "a build whose blocks the default kernels cannot run"
    );
    let (m, n, k) = (3, 40, 832);
    for (label, g) in devices() {
        let c = CodeCase::dual(m, n, k);
        g.set_gemv(v).unwrap();
        let direct = c.run(&g, (ops::gemv_codes, Codes::Fp8), false, (m, n, k));
        let up = |b: &[u8]| g.upload_new(b).unwrap();
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (w, x) = (up(&c.w), up(&c.x));
        let (sw, sa) = (up(&f32_bytes(&c.sw)), up(&f32_bytes(&c.sa)));
        let y = g.alloc(m * n * 2).unwrap();
        g.begin_capture().unwrap();
        ops::gemv_codes(
            &g,
            Codes::Fp8,
            (w.ptr, sw.ptr, 0),
            (x.ptr, sa.ptr),
            y.ptr,
            (m, n, k),
        )
        .unwrap();
        let graph = g.end_capture().unwrap();
        assert!(g.set_gemv(GEMV_DEFAULT).is_ok());
        g.begin_capture().unwrap();
        assert!(g.set_gemv(v).is_err(), "{label}: not while capturing");
        g.end_capture().unwrap();
        g.replay(&graph).unwrap();
        g.sync().unwrap();
        let mut out = vec![0u8; m * n * 2];
        g.download(y.ptr, &mut out).unwrap();
        assert!(out == direct, "{label}: the replay ran another build");
    }
}
