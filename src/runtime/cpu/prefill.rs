//! Dense Linear layers over many activation rows (prefill, `qforge eval` scoring): the weight
//! widened to f32 one block of rows at a time and multiplied with the `gemm` crate's packed,
//! cache-blocked kernels. The row-at-a-time path ([`super::dot::dense_dot`]: one weight row
//! against four activation rows) re-reads every activation row for every weight row, which
//! bounds it by memory traffic once the activations leave the L1 cache. Accumulation is f32
//! either way; only the order of the additions differs, so a row's result then depends on
//! how many rows run with it: used only when `Backend::set_fast_prefill` is on (`qforge
//! eval`), never by default (`verify` and the goldens rely on that independence).

use crate::runtime::cpu::dot::{bf16_to_f32, f16_to_f32};
use crate::runtime::weights::{Dense, Linear};
use rayon::prelude::*;

/// From this many activation rows on, dense Linear layers go through [`dense_gemm`].
pub const GEMM_MIN_ROWS: usize = 32;
/// Weight rows widened (and multiplied) per task: `BLOCK × cols` f32 per thread.
const BLOCK: usize = 128;

/// The output pointer, shared by tasks that write disjoint column ranges of it.
struct Out(*mut f32);
// SAFETY: each task writes only the columns of its own block (see `dense_gemm`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    fn at(&self, col: usize) -> *mut f32 {
        self.0.wrapping_add(col)
    }
}

/// `y[..t*rows] = x[..t*cols] · Wᵀ (+ bias)`, both row-major, for a dense weight `w`.
pub fn dense_gemm(lin: &Linear, w: &Dense, x: &[f32], t: usize, y: &mut [f32]) {
    let (n, k) = (lin.rows, lin.cols);
    assert!(
        x.len() >= t * k && y.len() >= t * n,
        "{}: buffer too small",
        lin.name
    );
    let out = Out(y.as_mut_ptr());
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .for_each_init(Vec::new, |wf: &mut Vec<f32>, b| {
            let r0 = b * BLOCK;
            let nb = BLOCK.min(n - r0);
            widen(w, r0 * k..(r0 + nb) * k, wf);
            // SAFETY: dst is y's columns r0..r0+nb of rows 0..t (row stride n), inside y
            // (checked above) and written by this task only; lhs is x as [t, k]; rhs is the
            // widened block transposed, [k, nb] (column stride k, row stride 1).
            unsafe {
                gemm::gemm(
                    t,
                    nb,
                    k,
                    out.at(r0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    wf.as_ptr(),
                    k as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    if let Some(bias) = &lin.bias {
        for row in y[..t * n].chunks_exact_mut(n) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

fn widen(w: &Dense, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
    out.clear();
    match w {
        Dense::Bf16(v) => out.extend(v[range].iter().map(|&b| bf16_to_f32(b))),
        Dense::F16(v) => out.extend(v[range].iter().map(|&b| f16_to_f32(b))),
        Dense::F32(v) => out.extend_from_slice(&v[range]),
    }
}
