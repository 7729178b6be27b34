//! `XᵀX` of one calibration sample summed in the order of torch 2.14's f32 `matmul` on an
//! AVX2 CPU (MKL 2024.2 `sgemm`), so that the GPTQ Hessian has llm-compressor's bits.
//!
//! MKL splits the K dimension (the sample's tokens) into blocks; each output element is a
//! chain of fused multiply-adds over one block, starting from zero, and the blocks' results
//! are added to the output one after another (not fused). The blocks ([`k_blocks`]), found
//! empirically against torch (`inp.matmul(inp.t())` as `accumulate_hessian` calls it, random
//! BF16 inputs, every output compared bit for bit; 1 and 2 threads; 576, 960 and 1,536
//! columns; K = 64 … 2,048, odd and even): up to 192 tokens one block; 193–384 two halves of
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

/// Rows of the output computed together: each loaded `y[k][j]` serves all of them.
const ROWS: usize = 4;

/// The lower triangle (and a few entries above it) of `yᵀy`, `y` being `tokens × n`
/// row-major, into `out` (`n × n`, row-major): `out[i][j]` for `j <= i` in MKL's order.
pub(super) fn lower_product(y: &[f32], tokens: usize, n: usize, out: &mut [f32], parallel: bool) {
    let blocks = k_blocks(tokens);
    let rows = |(g, chunk): (usize, &mut [f32])| rows_avx2_or_plain(y, n, &blocks, g * ROWS, chunk);
    if parallel {
        out.par_chunks_mut(ROWS * n).enumerate().for_each(rows);
    } else {
        out.chunks_mut(ROWS * n).enumerate().for_each(rows);
    }
}

fn rows_avx2_or_plain(y: &[f32], n: usize, blocks: &[Range<usize>], i0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { rows_avx2(y, n, blocks, i0, out) };
    }
    rows_body(y, n, blocks, i0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(y: &[f32], n: usize, blocks: &[Range<usize>], i0: usize, out: &mut [f32]) {
    rows_body(y, n, blocks, i0, out)
}

/// Output rows `i0..i0 + out.len() / n`, columns `0..=` the last of those rows.
#[inline(always)]
fn rows_body(y: &[f32], n: usize, blocks: &[Range<usize>], i0: usize, out: &mut [f32]) {
    let nrows = out.len() / n;
    let width = (i0 + nrows).min(n);
    let mut acc = [
        vec![0f32; width],
        vec![0f32; width],
        vec![0f32; width],
        vec![0f32; width],
    ];
    for (b, block) in blocks.iter().enumerate() {
        acc.iter_mut().for_each(|a| a.fill(0.0));
        for k in block.clone() {
            let yk = &y[k * n..k * n + width];
            let a: [f32; ROWS] = std::array::from_fn(|r| y[k * n + (i0 + r).min(n - 1)]);
            let [a0, a1, a2, a3] = &mut acc;
            for (j, &v) in yk.iter().enumerate() {
                a0[j] = a[0].mul_add(v, a0[j]);
                a1[j] = a[1].mul_add(v, a1[j]);
                a2[j] = a[2].mul_add(v, a2[j]);
                a3[j] = a[3].mul_add(v, a3[j]);
            }
        }
        for (r, row) in out.chunks_mut(n).enumerate() {
            let dst = &mut row[..width];
            if b == 0 {
                dst.copy_from_slice(&acc[r]);
            } else {
                dst.iter_mut().zip(&acc[r]).for_each(|(d, s)| *d += s);
            }
        }
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
    /// of fused multiply-adds from zero, the blocks added in order (n not a multiple of the
    /// 4 rows done together; one, two-and-a-half and three blocks).
    #[test]
    fn product_is_the_block_chains_added() {
        let n = 7;
        for tokens in [5, 301, 400] {
            let y: Vec<f32> = (0..tokens * n)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.37)
                .collect();
            let mut out = vec![0f32; n * n];
            lower_product(&y, tokens, n, &mut out, tokens == 400);
            for i in 0..n {
                for j in 0..=i {
                    let mut c = 0f32;
                    for (b, block) in k_blocks(tokens).into_iter().enumerate() {
                        let acc = block.fold(0f32, |a, k| y[k * n + i].mul_add(y[k * n + j], a));
                        c = if b == 0 { acc } else { c + acc };
                    }
                    assert_eq!(
                        out[i * n + j].to_bits(),
                        c.to_bits(),
                        "{tokens}: ({i}, {j})"
                    );
                }
            }
        }
    }
}
