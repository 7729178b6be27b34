//! `XᵀX` of one calibration sample summed in the order of torch 2.14's f32 `matmul` on an
//! AVX2 CPU (MKL 2024.2 `sgemm`), so that the GPTQ Hessian has llm-compressor's bits.
//!
//! MKL splits the K dimension (the sample's tokens) into blocks; each output element is a
//! chain of fused multiply-adds over one block, starting from zero, and the blocks' results
//! are added to the output one after another (not fused). The blocks ([`k_blocks`]), found
//! empirically against torch (`inp.matmul(inp.t())` as `accumulate_hessian` calls it, random
//! BF16 inputs, every output compared bit for bit; 44 lengths K = 64 … 2,048 at 576
//! columns, a few at 40 to 2,048 columns; 2 threads, and 1 for five lengths): up to 192 tokens one block; 193–384 two halves of
//! `K / 2` (an odd K's last token a block of its own); beyond, blocks of 192 and the rest.
//! Any other split tried (one chain, fixed 128 or 192, even thirds…) differs in 4–90% of
//! the outputs. A CPU whose MKL takes another code path (AVX-512) may block differently.

use rayon::prelude::*;
use std::ops::Range;

/// MKL's K block for these products: the largest run of tokens summed in one chain.
const KC: usize = 192;

/// The token ranges MKL sums as separate chains for a sample of `tokens` tokens.
pub(super) fn k_blocks(tokens: usize) -> Vec<Range<usize>> {
    let bounds: Vec<usize> = if tokens <= KC {
        vec![tokens]
    } else if tokens <= 2 * KC {
        let half = tokens / 2;
        vec![half, 2 * half, tokens]
    } else {
        (1..=tokens.div_ceil(KC))
            .map(|b| (b * KC).min(tokens))
            .collect()
    };
    let mut start = 0;
    let mut out = Vec::new();
    for end in bounds {
        if end > start {
            out.push(start..end);
            start = end;
        }
    }
    out
}

/// Rows and columns of the output computed together: a 4 × 16 tile of running sums stays
/// in registers (8 AVX2 vectors) while its block of tokens streams past.
const ROWS: usize = 4;
const COLS: usize = 16;

/// Adds the lower triangle (and a few entries above it) of `yᵀy`, `y = scale · x` (rounded
/// to f32), `x` being `tokens × n` row-major, to `out` (`n × n`, row-major): `out[i][j]` for
/// `j <= i` gets `yᵀy[i][j]` summed in MKL's order, then added with one rounding (as
/// `hessian += inp.matmul(inp.t())` does: the product is made first, then added). The
/// scaling is done while packing, so that the scaled copy is the only one.
pub(super) fn add_lower_product(
    x: &[f32],
    scale: f32,
    tokens: usize,
    n: usize,
    out: &mut [f32],
    parallel: bool,
) {
    if n == 0 {
        return;
    }
    // Packed in panels of 16 columns, each `tokens × 16` and contiguous, so that a tile
    // streams through memory; the last panel is padded with zeros, whose outputs are
    // dropped.
    let panels = n.div_ceil(COLS);
    let mut packed = vec![0f32; panels * tokens * COLS];
    for (k, src) in x.chunks(n).enumerate() {
        for (p, part) in src.chunks(COLS).enumerate() {
            let at = (p * tokens + k) * COLS;
            for (d, &v) in packed[at..at + part.len()].iter_mut().zip(part) {
                *d = scale * v;
            }
        }
    }
    let blocks = k_blocks(tokens);
    let padded = Padded {
        y: &packed,
        n,
        tokens,
    };
    let rows = |(g, chunk): (usize, &mut [f32])| padded.rows(&blocks, g * ROWS, chunk);
    if parallel {
        out.par_chunks_mut(ROWS * n).enumerate().for_each(rows);
    } else {
        out.chunks_mut(ROWS * n).enumerate().for_each(rows);
    }
}

struct Padded<'a> {
    /// Panels of [`COLS`] columns, each `tokens × COLS` row-major.
    y: &'a [f32],
    n: usize,
    tokens: usize,
}

impl Padded<'_> {
    /// Output rows `i0..` (`out` holds up to [`ROWS`] of them), columns up to the last row.
    fn rows(&self, blocks: &[Range<usize>], i0: usize, out: &mut [f32]) {
        let nrows = out.len() / self.n;
        let last = i0 + nrows - 1;
        for j0 in (0..=last).step_by(COLS) {
            let width = COLS.min(self.n - j0);
            // The blocks' chains added one after another: the product's value.
            let mut product = [[0f32; COLS]; ROWS];
            for (b, block) in blocks.iter().enumerate() {
                let acc = self.tile(block.clone(), i0, j0);
                for (p, a) in product.iter_mut().zip(&acc) {
                    if b == 0 {
                        *p = *a;
                    } else {
                        p.iter_mut().zip(a).for_each(|(d, s)| *d += s);
                    }
                }
            }
            for (row, p) in out.chunks_mut(self.n).zip(&product) {
                let dst = &mut row[j0..j0 + width];
                dst.iter_mut().zip(p).for_each(|(d, s)| *d += s);
            }
        }
    }

    /// One chain of fused multiply-adds per output of the tile, over the tokens `block`.
    fn tile(&self, block: Range<usize>, i0: usize, j0: usize) -> [[f32; COLS]; ROWS] {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { self.tile_avx2(block, i0, j0) };
        }
        self.tile_body(block, i0, j0)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(&self, block: Range<usize>, i0: usize, j0: usize) -> [[f32; COLS]; ROWS] {
        self.tile_body(block, i0, j0)
    }

    #[inline(always)]
    fn tile_body(&self, block: Range<usize>, i0: usize, j0: usize) -> [[f32; COLS]; ROWS] {
        let mut acc = [[0f32; COLS]; ROWS];
        let panel = |col: usize| &self.y[col / COLS * self.tokens * COLS..][..self.tokens * COLS];
        let (rows, cols) = (panel(i0), panel(j0));
        let ri = i0 % COLS;
        for k in block {
            let yk: &[f32; COLS] = cols[k * COLS..(k + 1) * COLS].try_into().unwrap();
            let a: &[f32; ROWS] = rows[k * COLS + ri..k * COLS + ri + ROWS]
                .try_into()
                .unwrap();
            for r in 0..ROWS {
                for c in 0..COLS {
                    acc[r][c] = a[r].mul_add(yk[c], acc[r][c]);
                }
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_as_mkl_splits_k() {
        let sizes = |t| k_blocks(t).iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(64), [64]);
        assert_eq!(sizes(192), [192]);
        assert_eq!(sizes(193), [96, 96, 1]);
        assert_eq!(sizes(256), [128, 128]);
        assert_eq!(sizes(384), [192, 192]);
        assert_eq!(sizes(385), [192, 192, 1]);
        assert_eq!(sizes(777), [192, 192, 192, 192, 9]);
        assert!(k_blocks(0).is_empty());
    }

    /// The vectorised rows against the definition, element by element: every block a chain
    /// of fused multiply-adds from zero, the blocks added in order, the result added to the
    /// sum (n not a multiple of the
    /// 4 rows done together; one, two-and-a-half and three blocks).
    #[test]
    fn product_is_the_block_chains_added() {
        let n = 7;
        for tokens in [5, 301, 400] {
            let y: Vec<f32> = (0..tokens * n)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.37)
                .collect();
            // Added to a running sum that is not zero: the product is rounded first, then
            // added once.
            let mut out = vec![1e-3f32; n * n];
            add_lower_product(&y, 1.0, tokens, n, &mut out, tokens == 400);
            for i in 0..n {
                for j in 0..=i {
                    let mut c = 0f32;
                    for (b, block) in k_blocks(tokens).into_iter().enumerate() {
                        let acc = block.fold(0f32, |a, k| y[k * n + i].mul_add(y[k * n + j], a));
                        c = if b == 0 { acc } else { c + acc };
                    }
                    assert_eq!(
                        out[i * n + j].to_bits(),
                        (1e-3f32 + c).to_bits(),
                        "{tokens}: ({i}, {j})"
                    );
                }
            }
        }
    }
}
