//! The row kernels (`add_rmsnorm`, `silu_mul`, `quant_rows`) keep a row that fits in
//! registers (n % 8 == 0, n <= 64 · threads) and loop over it otherwise: both paths must write
//! the same codes, scales, BF16 outputs and residuals, bit for bit, for FP8, int8 and BF16
//! outputs, on rows with zeros and NaN. The same launch at 512 threads takes the register path
//! and at 64 the loop (for n > 4096). `quant_rows` is also checked against the CPU's
//! formulas at the widths `ops` launches (register path at 8192 and 8200, loop at 8196 and
//! 40000). On the emulator and on a real GPU when present.
#![cfg(feature = "cuda")]

mod cuda_util;

use cuda_util::devices;
use qforge::numerics::e4m3_to_f32;
use qforge::runtime::cpu::linear::{quantize_activations, quantize_int8_activations};
use qforge::runtime::cuda::gpu::{cfg, Arg, Gpu};
use qforge::runtime::cuda::ops::{self, ActOut};

const ROWS: usize = 3;

/// A kernel's arguments from its outputs `(q, s, out, int8)`.
type Args<'a> = &'a dyn Fn(u64, u64, u64, i32) -> Vec<Arg>;

/// Row 0 ordinary values, row 1 zeros, row 2 with a NaN; multiples of 1/16 below 64, so
/// that squares and their sums are exact in any order (BF16-exact too).
fn rows(n: usize, salt: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(ROWS * n);
    for r in 0..ROWS {
        for c in 0..n {
            let v = match r {
                1 => 0.0,
                2 if c == n / 3 => f32::NAN,
                _ => (((c * 7919 + r * 104729 + salt) % 2001) as f32 - 1000.0) / 16.0,
            };
            x.push(half::bf16::from_f32(v).to_f32());
        }
    }
    x
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn download(g: &Gpu, ptr: u64, bytes: usize) -> Vec<u8> {
    let mut b = vec![0u8; bytes];
    g.download(ptr, &mut b).unwrap();
    b
}

/// The three outputs a row kernel can write: 0 int8 codes, 1 FP8 codes, 2 BF16.
const OUTPUTS: [(&str, i32); 3] = [("int8", 1), ("fp8", 0), ("bf16", -1)];

/// Runs `kernel` with `threads` per block and `args(q, s, out, int8)` on fresh output
/// buffers; returns everything it wrote (codes, scales, bf16 out) as bytes.
fn outputs(g: &Gpu, kernel: &str, threads: u32, n: usize, out: i32, args: Args) -> Vec<u8> {
    let (q, s, o) = (
        g.alloc(ROWS * n).unwrap(),
        g.alloc(ROWS * 4).unwrap(),
        g.alloc(ROWS * n * 2).unwrap(),
    );
    let a = match out {
        -1 => args(0, 0, o.ptr, 0),
        int8 => args(q.ptr, s.ptr, 0, int8),
    };
    g.launch(kernel, cfg((ROWS as u32, 1), threads, 0), &a)
        .unwrap();
    let mut all = download(g, q.ptr, ROWS * n);
    all.extend(download(g, s.ptr, ROWS * 4));
    all.extend(download(g, o.ptr, ROWS * n * 2));
    all
}

#[test]
fn register_and_loop_paths_write_the_same_bits() {
    let n = 8192;
    for (label, g) in devices() {
        let x = g.upload_new(&bf16_bytes(&rows(n, 0))).unwrap();
        let gu = g.upload_new(&bf16_bytes(&rows(2 * n, 1))).unwrap();
        let w: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
        let w = g.upload_new(&f32_bytes(&w)).unwrap();
        let delta = g.upload_new(&bf16_bytes(&rows(n, 3))).unwrap();
        for (out_name, out) in OUTPUTS {
            let quant = |q, s, _o, int8| {
                vec![
                    Arg::U64(x.ptr),
                    Arg::I32(n as i32),
                    Arg::U64(q),
                    Arg::U64(s),
                    Arg::I32(int8),
                ]
            };
            // gu: [gate | up] per row, inter = n.
            let silu = |q, s, o, int8| {
                vec![
                    Arg::U64(gu.ptr),
                    Arg::I32(n as i32),
                    Arg::U64(q),
                    Arg::U64(s),
                    Arg::U64(o),
                    Arg::I32(int8),
                ]
            };
            let mut cases: Vec<(&str, usize, Args)> = vec![("silu_mul", n, &silu)];
            if out >= 0 {
                cases.push(("quant_rows", n, &quant));
            }
            for (kernel, width, args) in cases {
                let fast = outputs(&g, kernel, 512, width, out, args);
                let slow = outputs(&g, kernel, 64, width, out, args);
                assert!(fast == slow, "{label} {kernel} {out_name}: paths differ");
            }
            // add_rmsnorm updates the residual in place: each path on its own copy.
            let norm = |threads| {
                let res = g.upload_new(&f32_bytes(&rows(n, 4))).unwrap();
                let args = |q, s, o, int8| {
                    vec![
                        Arg::U64(res.ptr),
                        Arg::U64(delta.ptr),
                        Arg::U64(w.ptr),
                        Arg::F32(1e-5),
                        Arg::I32(n as i32),
                        Arg::U64(q),
                        Arg::U64(s),
                        Arg::U64(o),
                        Arg::I32(int8),
                    ]
                };
                let mut all = outputs(&g, "add_rmsnorm", threads, n, out, &args);
                all.extend(download(&g, res.ptr, ROWS * n * 4));
                all
            };
            assert!(
                norm(512) == norm(64),
                "{label} add_rmsnorm {out_name}: paths differ"
            );
        }
    }
}

#[test]
fn quant_rows_match_the_cpu_on_both_paths() {
    for n in [8192, 8200, 8196, 40000] {
        let x = rows(n, 5);
        let (mut want_fp8, mut want_s8) = (vec![0f32; x.len()], vec![0i8; x.len()]);
        let (mut s_fp8, mut s_s8) = (vec![0f32; ROWS], vec![0f32; ROWS]);
        quantize_activations(&x, n, &mut want_fp8, &mut s_fp8);
        quantize_int8_activations(&x, n, &mut want_s8, &mut s_s8);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (label, g) in devices() {
            let xb = g.upload_new(&bf16_bytes(&x)).unwrap();
            let (q, s) = (g.alloc(x.len()).unwrap(), g.alloc(ROWS * 4).unwrap());
            ops::quant_rows(&g, xb.ptr, ROWS, n, ActOut::Fp8 { q: q.ptr, s: s.ptr }).unwrap();
            let codes: Vec<f32> = download(&g, q.ptr, x.len())
                .into_iter()
                .map(e4m3_to_f32)
                .collect();
            assert_eq!(bits(&codes), bits(&want_fp8), "{label} n {n}: fp8 codes");
            let scales = g.download_f32(s.ptr, ROWS).unwrap();
            assert_eq!(bits(&scales), bits(&s_fp8), "{label} n {n}: fp8 scales");
            ops::quant_rows(&g, xb.ptr, ROWS, n, ActOut::Int8 { q: q.ptr, s: s.ptr }).unwrap();
            let codes: Vec<i8> = download(&g, q.ptr, x.len())
                .into_iter()
                .map(|c| c as i8)
                .collect();
            assert_eq!(codes, want_s8, "{label} n {n}: int8 codes");
            let scales = g.download_f32(s.ptr, ROWS).unwrap();
            assert_eq!(bits(&scales), bits(&s_s8), "{label} n {n}: int8 scales");
        }
    }
}
