//! The summation order of torch's BF16 matmuls on an x86 CPU with AVX-512 BF16
//! ([`TorchCpu::Avx512Bf16`](super::torch_dot::TorchCpu)): there `F.linear` and both
//! attention products go to oneDNN's matmul (`mkldnn_bf16_gemm`, `use_mkldnn_bf16_matmul`),
//! whose kernel accumulates each output in one f32 register lane with `vdpbf16ps`. That
//! instruction takes the reduction dimension in pairs and adds the odd element's product
//! first, then the even one's, rounding after each (Intel SDM: two FMAs, round to nearest
//! even). Each output is therefore a running sum over `k` in the order 1, 0, 3, 2, 5, 4, ...
//! (an odd length ends with its last element alone: its partner is padding, whose product
//! +0 changes no sum).
//!
//! Found by running llm-compressor on this (AVX2) machine with torch's BF16 matmuls replaced
//! by emulations of candidate orders, against the shared g128 fixtures (made on an AVX-512
//! CPU): this order, with 16-lane softmax and RMSNorm sums, leaves 10 of 458,752 W8A8 codes
//! different from the fixture (a running sum in index order: 1,017; the AVX2 order: 2,511).
//!
//! Nothing ties one output to another, so the kernel vectorises across outputs: a tile of
//! [`ROWS`] token rows × [`OUTS`] outputs runs the `k` chain with a broadcast `x` and
//! contiguous weights (packed in pair order), each output in its own vector element.

use super::torch_dot::par_row_tiles;

/// Token rows of a tile.
const ROWS: usize = 4;
/// Outputs of a tile (two AVX2 registers).
const OUTS: usize = 16;

/// The order in which oneDNN's kernel adds the `k` products of one output.
pub fn pair_order(k: usize) -> impl Iterator<Item = usize> {
    (0..k.div_ceil(2)).flat_map(move |p| [2 * p + 1, 2 * p].into_iter().filter(move |&i| i < k))
}

/// `Σ a[i]·b[i]` over BF16 values in [`pair_order`] (the order every other function here
/// is tested against).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    pair_order(a.len().min(b.len())).fold(0.0, |s, i| s + a[i] * b[i])
}

/// `y[r, o] = Σ x[r, ·]·w[o, ·]` in [`pair_order`], unrounded: `x` is `[rows, k]`, `w` is
/// `[out, k]`, `y` is `[rows, out]`, all row-major.
pub fn linear_sums(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    let (out, rows) = (w.len() / k, x.len() / k);
    let order: Vec<usize> = pair_order(k).collect();
    let wp = pack_weights(w, k, out, &order);
    par_row_tiles(y, (rows, out, k), ROWS, |r0, r1, yj| {
        rows_sums(&x[r0 * k..r1 * k], &wp, k, out, &order, yj)
    });
}

/// The weights as panels of [`OUTS`] outputs, each `[k in pair order][OUTS]` (the last
/// panel padded with zeros).
fn pack_weights(w: &[f32], k: usize, out: usize, order: &[usize]) -> Vec<f32> {
    let panels = out.div_ceil(OUTS);
    let mut wp = vec![0f32; panels * k * OUTS];
    for (p, panel) in wp.chunks_exact_mut(k * OUTS).enumerate() {
        for (o, row) in w.chunks_exact(k).enumerate().skip(p * OUTS).take(OUTS) {
            for (kk, &i) in order.iter().enumerate() {
                panel[kk * OUTS + o - p * OUTS] = row[i];
            }
        }
    }
    wp
}

fn rows_sums(x: &[f32], wp: &[f32], k: usize, out: usize, order: &[usize], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above). The body is plain safe Rust; the
        // attribute lets the compiler use 8-lane vectors. Same results either way.
        return unsafe { rows_sums_avx2(x, wp, k, out, order, y) };
    }
    rows_sums_body(x, wp, k, out, order, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_sums_avx2(
    x: &[f32],
    wp: &[f32],
    k: usize,
    out: usize,
    order: &[usize],
    y: &mut [f32],
) {
    rows_sums_body(x, wp, k, out, order, y)
}

/// [`linear_sums`] of the rows of `x`, from the packed weights.
#[inline(always)]
fn rows_sums_body(x: &[f32], wp: &[f32], k: usize, out: usize, order: &[usize], y: &mut [f32]) {
    let rows = x.len() / k;
    // The rows of a tile in pair order, interleaved: `xp[kk * ROWS + r]`.
    let mut xp = vec![0f32; k * ROWS];
    for r0 in (0..rows).step_by(ROWS) {
        let n = ROWS.min(rows - r0);
        for r in 0..n {
            let xr = &x[(r0 + r) * k..][..k];
            for (kk, &i) in order.iter().enumerate() {
                xp[kk * ROWS + r] = xr[i];
            }
        }
        for (p, panel) in wp.chunks_exact(k * OUTS).enumerate() {
            let mut acc = [[0f32; OUTS]; ROWS];
            for (xk, wk) in xp.chunks_exact(ROWS).zip(panel.chunks_exact(OUTS)) {
                for (a, &xv) in acc.iter_mut().zip(xk) {
                    // Not a fused multiply-add: the product of two BF16 values is exact,
                    // so this rounds once, as `vdpbf16ps` does.
                    for (s, &wv) in a.iter_mut().zip(wk) {
                        *s += xv * wv;
                    }
                }
            }
            let o0 = p * OUTS;
            let m = OUTS.min(out - o0);
            for (r, a) in acc.iter().enumerate().take(n) {
                y[(r0 + r) * out + o0..][..m].copy_from_slice(&a[..m]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: f32 = 1.0 / 16_777_216.0; // 2^-24: 1 + TINY rounds back to 1 (a tie, to even)

    #[test]
    fn pairs_add_the_odd_element_first() {
        assert_eq!(pair_order(5).collect::<Vec<_>>(), [1, 0, 3, 2, 4]);
        // Pair order adds TINY to 0, then 1 (TINY is lost), TINY (lost), -1: 0. Index order
        // adds 1, TINY (lost), -1, TINY: TINY.
        let (a, b) = ([1.0, TINY, -1.0, TINY], [1.0; 4]);
        assert_eq!(dot(&a, &b), 0.0);
        let running: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(running, TINY);
    }

    /// Values that cancel, so that any other order shows after rounding.
    fn cancelling(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let m = ((s >> 9) & 0x7f) as f32 / 16.0 - 4.0;
                let e = [1.0, 1e-3, 1e3, 1e-6][(s >> 3) as usize & 3];
                crate::calibrate::forward::bf16(m * e)
            })
            .collect()
    }

    #[test]
    fn kernel_sums_each_output_in_pair_order() {
        for (rows, out, k) in [(1, 1, 1), (5, 17, 7), (9, 33, 128), (6, 16, 383)] {
            let x = cancelling(rows * k, 1);
            let w = cancelling(out * k, 2);
            let mut y = vec![0f32; rows * out];
            linear_sums(&x, &w, k, &mut y);
            for r in 0..rows {
                for o in 0..out {
                    let want = dot(&x[r * k..][..k], &w[o * k..][..k]);
                    assert_eq!(y[r * out + o].to_bits(), want.to_bits(), "{rows}x{out}x{k}");
                }
            }
        }
    }
}
