//! [`torch_dot::linear_sums`](super::torch_dot::linear_sums) on AVX2 + FMA, GEMM-shaped: the
//! same f32 sums, bit for bit, several times faster.
//!
//! torch's order binds each output separately: lane `l` of an output is the chain over
//! blocks `b` of `x[64b + l]·w[64b + l]`, fused-multiply-added in `b` order, then the 64
//! lanes are halved in a fixed tree, then the tail. Nothing ties one output to another, so
//! instead of vectorising one dot product across its lanes (load-bound, and a 64→1
//! horizontal reduction per output) this kernel vectorises across outputs: for one lane `l`
//! a register tile of [`ROWS`] token rows × [`OUTS`] outputs runs its `b` chain with a
//! broadcast `x` and 16 contiguous weights, then the 64 lane sums of the tile are halved
//! with vector adds, each output in its own vector element, in torch's tree. Each output
//! sees exactly the operations of the scalar order, so the results are identical.
//!
//! Both operands are repacked per call so that the chain for one lane reads contiguous
//! memory: `x` as `[row tile][lane][block][ROWS]`, the weights one panel of 16 outputs at a
//! time as `[lane][block][OUTS]` (then the tail `[k - main][OUTS]`). Packing costs one read
//! and write of each operand; the sums cost `rows × out × k` multiply-adds.

use super::torch_dot::par_row_tiles;
use std::arch::x86_64::*;

/// Running sums of torch's main loop (8 registers × 8 lanes).
const BLOCK: usize = 64;
/// f32 lanes of one register: torch's tail has 8 running sums.
const LANES: usize = 8;
/// BF16 elements of one register: the step of torch's vectorised tail.
const BF16_STEP: usize = 16;
/// Token rows of a register tile.
const ROWS: usize = 6;
/// Outputs of a register tile (two registers).
const OUTS: usize = 16;
/// Accumulator registers of a tile: 12, leaving 4 of AVX2's 16 for the operands.
const ACC: usize = 2 * ROWS;

type Tile = [__m256; ACC];

/// `y[r, o] = Σ x[r, ·]·w[o, ·]` in torch's order ([`super::torch_dot::linear_sums`]). The
/// row tiles are shared among rayon's threads (each output is still one thread's sum).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn linear_sums(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    let (out, rows) = (w.len() / k, x.len() / k);
    let main = k & !(BLOCK - 1);
    let xp = pack_rows(x, k, rows, main);
    par_row_tiles(y, (rows, out, k), ROWS, |r0, r1, yj| {
        // SAFETY: the CPU has AVX2 and FMA (this function's contract).
        unsafe { rows_sums(&xp[r0 * main..], &x[r0 * k..r1 * k], w, k, yj) }
    });
}

/// [`linear_sums`] of the rows of `x` (a whole number of tiles from the start of `xp`, the
/// same rows packed).
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_sums(xp: &[f32], x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    let (out, rows) = (w.len() / k, x.len() / k);
    let main = k & !(BLOCK - 1);
    let mut wp = vec![0f32; OUTS * k];
    let mut lanes = vec![[_mm256_setzero_ps(); ACC]; BLOCK];
    let mut tile_out = [0f32; OUTS];
    for p in 0..out.div_ceil(OUTS) {
        let o0 = p * OUTS;
        let outs = OUTS.min(out - o0);
        pack_panel(&w[o0 * k..(o0 + outs) * k], k, main, &mut wp);
        for t in 0..rows.div_ceil(ROWS) {
            let r0 = t * ROWS;
            let nrows = ROWS.min(rows - r0);
            let mut sums = main_sums(&xp[r0 * main..(r0 + ROWS) * main], &wp, main, &mut lanes);
            add_tail(
                &mut sums,
                &x[r0 * k..(r0 + nrows) * k],
                k,
                main,
                &wp[main * OUTS..],
            );
            for (r, pair) in sums.chunks_exact(2).take(nrows).enumerate() {
                _mm256_storeu_ps(tile_out.as_mut_ptr(), pair[0]);
                _mm256_storeu_ps(tile_out.as_mut_ptr().add(LANES), pair[1]);
                let yr = (r0 + r) * out + o0;
                y[yr..yr + outs].copy_from_slice(&tile_out[..outs]);
            }
        }
    }
}

/// `x` (`[rows, k]`) as `[row tile][lane][block][ROWS]` over the first `main` columns, the
/// last tile padded with zero rows.
fn pack_rows(x: &[f32], k: usize, rows: usize, main: usize) -> Vec<f32> {
    let blocks = main / BLOCK;
    let tiles = rows.div_ceil(ROWS);
    let mut xp = vec![0f32; tiles * ROWS * main];
    if main == 0 {
        return xp;
    }
    for (t, dst) in xp.chunks_exact_mut(ROWS * main).enumerate() {
        for r in 0..ROWS.min(rows - t * ROWS) {
            let row = &x[(t * ROWS + r) * k..][..main];
            for (j, &v) in row.iter().enumerate() {
                let (b, l) = (j / BLOCK, j % BLOCK);
                dst[(l * blocks + b) * ROWS + r] = v;
            }
        }
    }
    xp
}

/// Up to 16 weight rows (`[outs, k]`) as `[lane][block][OUTS]` over the first `main`
/// columns, then `[k - main][OUTS]`; missing outputs are zeros.
fn pack_panel(w: &[f32], k: usize, main: usize, wp: &mut [f32]) {
    let blocks = main / BLOCK;
    wp.fill(0.0);
    for (o, row) in w.chunks_exact(k).enumerate() {
        for (j, &v) in row[..main].iter().enumerate() {
            let (b, l) = (j / BLOCK, j % BLOCK);
            wp[(l * blocks + b) * OUTS + o] = v;
        }
        for (j, &v) in row[main..].iter().enumerate() {
            wp[(main + j) * OUTS + o] = v;
        }
    }
}

/// The main loop's 64 lane sums of one tile, halved to one sum per (row, output).
#[target_feature(enable = "avx2,fma")]
unsafe fn main_sums(xp: &[f32], wp: &[f32], main: usize, lanes: &mut [Tile]) -> Tile {
    let blocks = main / BLOCK;
    assert!(xp.len() >= ROWS * main && wp.len() >= OUTS * main && lanes.len() == BLOCK);
    for (l, lane) in lanes.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); ACC];
        // SAFETY: lane `l`'s chain is `blocks` steps of ROWS values of `xp` and OUTS of
        // `wp`, inside the lengths asserted above.
        let xl = xp.as_ptr().add(l * blocks * ROWS);
        let wl = wp.as_ptr().add(l * blocks * OUTS);
        for b in 0..blocks {
            let w0 = _mm256_loadu_ps(wl.add(b * OUTS));
            let w1 = _mm256_loadu_ps(wl.add(b * OUTS + LANES));
            for r in 0..ROWS {
                let xv = _mm256_broadcast_ss(&*xl.add(b * ROWS + r));
                acc[2 * r] = _mm256_fmadd_ps(xv, w0, acc[2 * r]);
                acc[2 * r + 1] = _mm256_fmadd_ps(xv, w1, acc[2 * r + 1]);
            }
        }
        *lane = acc;
    }
    halve(lanes)
}

/// Adds tiles by halving (`v[i] += v[i + n/2]`), as torch's `vec_reduce_all` per output.
#[target_feature(enable = "avx2,fma")]
unsafe fn halve(v: &mut [Tile]) -> Tile {
    let mut n = v.len();
    while n > 1 {
        n /= 2;
        let (low, high) = v.split_at_mut(n);
        for (a, b) in low.iter_mut().zip(high.iter()) {
            for i in 0..ACC {
                a[i] = _mm256_add_ps(a[i], b[i]);
            }
        }
    }
    v[0]
}

/// Adds torch's tail to `sums`: elements `main..` of the rows of `x` (up to ROWS, `[.., k]`)
/// against the packed tail `wt` (`[k - main][OUTS]`): 16 at a time into 8 lane sums (low
/// half then high half), halved and added (always, as torch does), then one by one.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_tail(sums: &mut Tile, x: &[f32], k: usize, main: usize, wt: &[f32]) {
    let vec_end = k & !(BF16_STEP - 1);
    let nrows = x.len() / k;
    let xv = |r: usize, j: usize| {
        if r < nrows {
            _mm256_set1_ps(x[r * k + j])
        } else {
            _mm256_setzero_ps()
        }
    };
    let wv = |j: usize, half: usize| {
        let s = &wt[(j - main) * OUTS + half * LANES..][..LANES];
        // SAFETY: `s` holds 8 f32.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    };
    let mut tail = [[_mm256_setzero_ps(); ACC]; LANES];
    for s in (main..vec_end).step_by(BF16_STEP) {
        for j in [s, s + LANES] {
            for (l, lane) in tail.iter_mut().enumerate() {
                let (w0, w1) = (wv(j + l, 0), wv(j + l, 1));
                for r in 0..ROWS {
                    let a = xv(r, j + l);
                    lane[2 * r] = _mm256_fmadd_ps(a, w0, lane[2 * r]);
                    lane[2 * r + 1] = _mm256_fmadd_ps(a, w1, lane[2 * r + 1]);
                }
            }
        }
    }
    let t = halve(&mut tail);
    for (s, t) in sums.iter_mut().zip(t) {
        *s = _mm256_add_ps(*s, t);
    }
    for j in vec_end..k {
        let (w0, w1) = (wv(j, 0), wv(j, 1));
        for r in 0..ROWS {
            let a = xv(r, j);
            sums[2 * r] = _mm256_add_ps(sums[2 * r], _mm256_mul_ps(a, w0));
            sums[2 * r + 1] = _mm256_add_ps(sums[2 * r + 1], _mm256_mul_ps(a, w1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::torch_dot;
    use proptest::prelude::*;

    fn bf16(x: f32) -> f32 {
        crate::calibrate::forward::bf16(x)
    }

    fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// BF16 values over many binades, some large and of both signs so that terms cancel and
    /// the order of the additions shows in the last bits.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            3 => (-1.0f32..1.0).prop_map(bf16),
            1 => (-1.0f32..1.0, -12i32..12).prop_map(|(m, e)| bf16(m * 2f32.powi(e))),
            1 => prop_oneof![Just(256.0f32), Just(-256.0), Just(0.0), Just(-0.0)],
        ]
    }

    fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<f32>, Vec<f32>)> {
        (1usize..14, 1usize..40, 1usize..300).prop_flat_map(|(rows, out, k)| {
            (
                Just(rows),
                Just(out),
                Just(k),
                proptest::collection::vec(value(), rows * k),
                proptest::collection::vec(value(), out * k),
            )
        })
    }

    fn check(rows: usize, out: usize, k: usize, x: &[f32], w: &[f32]) {
        let mut want = vec![0f32; rows * out];
        torch_dot::linear_sums_portable(x, w, k, &mut want);
        let mut got = vec![f32::NAN; rows * out];
        // SAFETY: the callers check for AVX2 and FMA.
        unsafe { super::linear_sums(x, w, k, &mut got) };
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "rows {rows} out {out} k {k} at {i}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn equals_the_portable_order_bit_for_bit((rows, out, k, x, w) in case()) {
            if avx2() {
                check(rows, out, k, &x, &w);
            }
        }
    }

    #[test]
    fn equals_the_portable_order_on_model_shapes() {
        if !avx2() {
            return;
        }
        // SmolLM2's Linears (576, 1536) and head widths, odd row counts, and widths with
        // every kind of tail; the last one large enough to be split among threads.
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let v = ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            bf16(if seed >> 63 == 1 { v * 300.0 } else { v })
        };
        for (rows, out, k) in [
            (13, 192, 576),
            (7, 40, 1536),
            (9, 64, 64),
            (5, 17, 1100),
            (100, 64, 600),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..out * k).map(|_| next()).collect();
            check(rows, out, k, &x, &w);
        }
    }
}
