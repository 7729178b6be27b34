//! cuBLASLt's three products computed on the host, for the CUDA emulator: so that the prefill
//! path around cuBLASLt (outer-vector scaling or f32 sums + the epilogue kernel, bias, row
//! offsets, the f32 logits) runs there as on a GPU. The products themselves are the
//! reference's: exact sums rounded once to f32 (tensor cores sum in f32 in another order).

use super::cublaslt::Kind;
use crate::numerics::e4m3_to_f32;
use crate::Result;
use half::bf16;
use rayon::prelude::*;

/// `D[m, n] = X[m, k] · W[n, k]ᵀ` as [`Kind`] describes, row-major, on host addresses.
///
/// # Safety
/// `w`, `x`, `d` (and `sa`, `sw` for [`Kind::Fp8Scaled`]) are host buffers of the sizes the
/// kind and shape imply; `d` does not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    kind: Kind,
    (m, n, k): (usize, usize, usize),
    w: u64,
    x: u64,
    d: u64,
    sa: u64,
    sw: u64,
) -> Result<()> {
    match kind {
        Kind::Fp8Scaled | Kind::Fp8Raw => {
            let w = std::slice::from_raw_parts(w as *const u8, n * k);
            let x = std::slice::from_raw_parts(x as *const u8, m * k);
            let dot = |r: usize, c: usize| -> f32 {
                let (xr, wr) = (&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
                let s: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| f64::from(e4m3_to_f32(a)) * f64::from(e4m3_to_f32(b)))
                    .sum();
                s as f32
            };
            if kind == Kind::Fp8Raw {
                let out = std::slice::from_raw_parts_mut(d as *mut f32, m * n);
                fill(out, n, dot);
            } else {
                let sa = std::slice::from_raw_parts(sa as *const f32, m);
                let sw = std::slice::from_raw_parts(sw as *const f32, n);
                let out = std::slice::from_raw_parts_mut(d as *mut u16, m * n);
                fill(out, n, |r, c| {
                    bf16::from_f32(sa[r] * (sw[c] * dot(r, c))).to_bits()
                });
            }
        }
        Kind::Bf16 { f32_out } => {
            let w = std::slice::from_raw_parts(w as *const u16, n * k);
            let x = std::slice::from_raw_parts(x as *const u16, m * k);
            let dot = |r: usize, c: usize| -> f32 {
                let (xr, wr) = (&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
                let f = |b: u16| f64::from(bf16::from_bits(b).to_f32());
                xr.iter().zip(wr).map(|(&a, &b)| f(a) * f(b)).sum::<f64>() as f32
            };
            if f32_out {
                let out = std::slice::from_raw_parts_mut(d as *mut f32, m * n);
                fill(out, n, dot);
            } else {
                let out = std::slice::from_raw_parts_mut(d as *mut u16, m * n);
                fill(out, n, |r, c| bf16::from_f32(dot(r, c)).to_bits());
            }
        }
    }
    Ok(())
}

/// `out[r * n + c] = f(r, c)`, rows in parallel.
fn fill<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, usize) -> T + Sync) {
    out.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        for (c, v) in row.iter_mut().enumerate() {
            *v = f(r, c);
        }
    });
}
