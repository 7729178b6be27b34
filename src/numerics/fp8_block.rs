//! FP8_BLOCK: FP8 E4M3 weights with one scale per `[bh, bw]` block (128×128 in the preset),
//! bit-exact with compressed-tensors 0.19's CPU path (fixtures/schemes/README.md §5.2).
//! The last block row/column may be partial: llm-compressor zero-pads, which never changes
//! an absmax, so a partial block simply uses its real elements.
//!
//! ```text
//! s[i,j] = D(absmax(block i,j) / 448) ; 0 -> finfo(D).eps     weight_scale [ceil(r/bh), ceil(c/bw)]
//! q      = e4m3(clamp(D(w / s) + 0.0, ±448))                  (Direct: no D)
//! ```

use super::fp8::{fp8_codes, fp8_scale, Fp8Rounding};
use super::rows::{absmax, bad_row_error, check_matrix, decode_finite, put_scale};
use crate::checkpoint::DType;
use crate::Result;
use rayon::prelude::*;

/// Quantizes a `[rows, cols]` weight in `[block[0], block[1]]` blocks. Writes `codes`
/// (`rows*cols` E4M3 codes) and `scales` (`ceil(rows/bh) * ceil(cols/bw)` scales in
/// `dtype`). Parallel over block rows.
#[allow(clippy::too_many_arguments)]
pub fn quantize_fp8_block_into(
    name: &str,
    dtype: DType,
    data: &[u8],
    rows: usize,
    cols: usize,
    block: [usize; 2],
    rounding: Fp8Rounding,
    codes: &mut [u8],
    scales: &mut [u8],
) -> Result<()> {
    let [bh, bw] = [block[0].max(1), block[1].max(1)];
    let (grid_rows, grid_cols) = (rows.div_ceil(bh), cols.div_ceil(bw));
    let dsz = dtype.size();
    let sizes = [
        ("code", codes.len(), rows * cols),
        ("scale", scales.len(), grid_rows * grid_cols * dsz),
    ];
    check_matrix(name, dtype, data, rows, cols, &sizes)?;
    let res = data
        .par_chunks(bh * cols * dsz)
        .zip(codes.par_chunks_mut(bh * cols))
        .zip(scales.par_chunks_mut(grid_cols * dsz))
        .try_for_each(|((band, out), sc)| {
            let s = band_scales(dtype, band, cols, bw).ok_or(())?;
            for (s, slot) in s.iter().zip(sc.chunks_exact_mut(dsz)) {
                put_scale(dtype, *s, slot);
            }
            for (row, out) in band.chunks(cols * dsz).zip(out.chunks_mut(cols)) {
                let parts = row.chunks(bw * dsz).zip(out.chunks_mut(bw)).zip(&s);
                for ((src, dst), &s) in parts {
                    fp8_codes(dtype, src, s, rounding, dst);
                }
            }
            Ok(())
        });
    res.map_err(|()| bad_row_error(name, dtype, data, cols))
}

/// The scales of the blocks of one band of rows; `None` if a row holds NaN or Inf.
fn band_scales(dtype: DType, band: &[u8], cols: usize, bw: usize) -> Option<Vec<f32>> {
    let mut buf = vec![0.0f32; cols];
    let mut maxes = vec![0.0f32; cols.div_ceil(bw)];
    for row in band.chunks(cols * dtype.size()) {
        decode_finite(dtype, row, &mut buf)?;
        for (m, part) in maxes.iter_mut().zip(buf.chunks(bw)) {
            *m = m.max(absmax(part));
        }
    }
    Some(maxes.into_iter().map(|a| fp8_scale(dtype, a)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_blocks_use_their_real_elements() {
        // A 3×3 weight in 2×2 blocks: the corner block holds one element.
        let w: Vec<f32> = vec![1.0, -2.0, 0.5, 3.0, 0.25, -448.0, 0.0, 0.0, 100.0];
        let data: Vec<u8> = w
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        let (mut codes, mut sc) = (vec![0u8; 9], vec![0u8; 8]);
        let r = Fp8Rounding::Eager;
        quantize_fp8_block_into(
            "t",
            DType::BF16,
            &data,
            3,
            3,
            [2, 2],
            r,
            &mut codes,
            &mut sc,
        )
        .unwrap();
        let scale =
            |i: usize| half::bf16::from_bits(u16::from_le_bytes([sc[2 * i], sc[2 * i + 1]]));
        let want = [3.0f32 / 448.0, 448.0 / 448.0, 0.0, 100.0 / 448.0];
        for (i, &a) in want.iter().enumerate() {
            let s = if a == 0.0 { 2f32.powi(-7) } else { a };
            assert_eq!(scale(i), half::bf16::from_f32(s), "block {i}");
        }
        assert_eq!(codes[8], 0x7E); // 100 / bf16(100/448) saturates at 448
        assert_eq!(codes[6], 0x00);
    }
}
