//! The fast prefill of `qforge eval` (`Backend::set_fast_prefill`): dense Linear layers and
//! attention as matrix products through the `gemm` crate's packed, cache-blocked kernels.
//!
//! Linear: the weight widened to f32 one block of rows at a time and multiplied with the
//! activation rows. The row-at-a-time path ([`super::dot::dense_dot`]: one weight row
//! against four activation rows) re-reads every activation row for every weight row, which
//! bounds it by memory traffic once the activations leave the L1 cache. Accumulation is f32
//! either way; only the order of the additions differs, so a row's result then depends on
//! how many rows run with it: used only when `Backend::set_fast_prefill` is on (`qforge
//! eval`), never by default (`verify` and the goldens rely on that independence).

use crate::runtime::cpu::attention::{AttnShape, KvView};
use crate::runtime::cpu::dot::{bf16_to_f32, f16_to_f32};
use crate::runtime::cpu::softmax::softmax_scaled;
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

/// A strided f32 matrix for [`matmul`]: element `(r, c)` at `ptr + r*rs + c*cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` (overwritten), single-threaded.
///
/// # Safety
/// Every element the shapes and strides address must be inside its allocation, and `dst`
/// must not overlap `lhs` or `rhs` nor be written by another thread meanwhile.
unsafe fn matmul(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: isize, lhs: Mat, rhs: Mat) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        false,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        0.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
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
            let lhs = Mat {
                ptr: x.as_ptr(),
                rs: k as isize,
                cs: 1,
            };
            // The widened block transposed: [k, nb], column stride k.
            let rhs = Mat {
                ptr: wf.as_ptr(),
                rs: 1,
                cs: k as isize,
            };
            // SAFETY: dst is y's columns r0..r0+nb of rows 0..t (row stride n), inside y
            // (checked above) and written by this task only; x is [t, k], wf [nb, k].
            unsafe { matmul(t, nb, k, out.at(r0), n as isize, lhs, rhs) };
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

/// Query rows per block in [`attention_gemm`]: a block's scores cover the keys its last row
/// sees, so at most `ATT_ROWS - 1` masked entries per row are computed and thrown away.
const ATT_ROWS: usize = 64;

/// [`super::attention::attention`] as matrix products: per query head and block of query
/// rows, `S = Q·Kᵀ` over the keys the block sees, `· scale`, the causal mask, softmax in f32
/// (`exp(x - max) · (1 / sum)`), then `O = P·V`. Same inputs and result layout (`out` is
/// `[t, heads*head_dim]`); only the order of the f32 additions differs. Parallel over heads.
pub fn attention_gemm(
    shape: AttnShape,
    q: &[f32],
    kv: KvView,
    pos: usize,
    t: usize,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let (qw, kvw) = (heads * d, kv_heads * d);
    let group = heads / kv_heads;
    let len = pos + t;
    assert!(
        q.len() >= t * qw
            && out.len() >= t * qw
            && kv.k.len() >= len * kvw
            && kv.v.len() >= len * kvw,
        "attention: buffer too small"
    );
    let scale = (d as f64).powf(-0.5) as f32;
    let dst = Out(out.as_mut_ptr());
    (0..heads)
        .into_par_iter()
        .for_each_init(Vec::new, |p: &mut Vec<f32>, h| {
            let off = (h / group) * d; // GQA: query head h reads kv head h / group
            for i0 in (0..t).step_by(ATT_ROWS) {
                let rows = ATT_ROWS.min(t - i0);
                let keys = pos + i0 + rows; // what the block's last row sees
                p.resize(rows * keys, 0.0);
                let qm = Mat {
                    ptr: q[i0 * qw + h * d..].as_ptr(),
                    rs: qw as isize,
                    cs: 1,
                };
                // Kᵀ: [d, keys], element (x, j) = k[j*kvw + off + x].
                let kt = Mat {
                    ptr: kv.k[off..].as_ptr(),
                    rs: 1,
                    cs: kvw as isize,
                };
                // SAFETY: p is [rows, keys]; q's rows i0..i0+rows and the cache's rows
                // 0..keys are in bounds (asserted above), columns off..off+d < kvw.
                unsafe { matmul(rows, keys, d, p.as_mut_ptr(), keys as isize, qm, kt) };
                for (i, row) in p.chunks_exact_mut(keys).enumerate() {
                    let seen = pos + i0 + i + 1; // causal: keys 0..=pos+i0+i
                    softmax_scaled(&mut row[..seen], scale);
                    row[seen..].fill(0.0);
                }
                let pm = Mat {
                    ptr: p.as_ptr(),
                    rs: keys as isize,
                    cs: 1,
                };
                let vm = Mat {
                    ptr: kv.v[off..].as_ptr(),
                    rs: kvw as isize,
                    cs: 1,
                };
                // SAFETY: dst is out's rows i0..i0+rows, columns h*d..(h+1)*d (row stride
                // qw), inside out (asserted) and written by this head's task only.
                unsafe {
                    let o = dst.at(i0 * qw + h * d);
                    matmul(rows, d, keys, o, qw as isize, pm, vm);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cpu::attention::attention;

    /// The GEMM attention gives the per-row loops' result up to f32 rounding, with grouped KV
    /// heads, a filled cache before the new rows, and more rows than one block.
    #[test]
    fn attention_gemm_matches_the_row_loops() {
        let shape = AttnShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 16,
        };
        let (qw, kvw) = (6 * 16, 2 * 16);
        for (pos, t) in [(0, 1), (0, 150), (37, 70), (200, 3)] {
            let len = pos + t;
            let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (pos * 1000 + t) as u64;
            let mut rand = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
                    })
                    .collect()
            };
            let (q, k, v) = (rand(t * qw), rand(len * kvw), rand(len * kvw));
            let kv = KvView { k: &k, v: &v };
            let mut want = vec![0.0; t * qw];
            let (mut sc, mut oh) = (vec![0.0; 6 * len], vec![0.0; t * qw]);
            attention(shape, &q, kv, pos, t, &mut sc, &mut oh, &mut want);
            let mut got = vec![f32::NAN; t * qw];
            attention_gemm(shape, &q, kv, pos, t, &mut got);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "pos {pos}, t {t}: max |Δ| {worst:e}");
            // The rows differ from one another: a wrong mask or head would show.
            if t > 1 {
                assert_ne!(want[..qw], want[(t - 1) * qw..]);
            }
        }
    }
}
