//! compressed-tensors' `pack_to_int32` (`pack-quantized`, fixtures/schemes/README.md §4.4):
//! `b`-bit signed codes become unsigned (`u = q + 2^(b-1)`), and each run of `32/b`
//! consecutive values along the packed dimension becomes one int32 word with the first
//! value in the least significant bits; a trailing partial word is padded with `u = 0`.
//! Words are written as little-endian bytes.

/// Values per int32 word.
pub fn pack_factor(bits: u32) -> usize {
    (32 / bits) as usize
}

/// Packed words per row of `cols` values (`ceil(cols / (32/b))`).
pub fn packed_len(cols: usize, bits: u32) -> usize {
    cols.div_ceil(pack_factor(bits))
}

/// The word holding `values` (int8 codes as bytes, at most `32/b` of them).
#[inline]
fn word(values: impl Iterator<Item = u8>, bits: u32) -> u32 {
    let offset = 1i32 << (bits - 1);
    let mask = (1u32 << bits) - 1;
    values.enumerate().fold(0u32, |w, (i, q)| {
        let u = ((q as i8 as i32 + offset) as u32) & mask;
        w | (u << (bits as usize * i))
    })
}

/// Packs `[rows, cols]` codes along the columns into `[rows, packed_len(cols)]` words
/// (`out`: `rows * packed_len(cols) * 4` bytes).
pub fn pack_columns(q: &[u8], rows: usize, cols: usize, bits: u32, out: &mut [u8]) {
    let n = pack_factor(bits);
    let words = packed_len(cols, bits);
    for (src, dst) in q.chunks(cols).zip(out.chunks_mut(words * 4)).take(rows) {
        for (chunk, w) in src.chunks(n).zip(dst.chunks_exact_mut(4)) {
            w.copy_from_slice(&word(chunk.iter().copied(), bits).to_le_bytes());
        }
    }
}

/// Packs `[rows, cols]` codes along the rows into `[packed_len(rows), cols]` words (the
/// asymmetric zero points): word `[k, g]` holds rows `k*32/b ..` of column `g`.
pub fn pack_rows(q: &[u8], rows: usize, cols: usize, bits: u32, out: &mut [u8]) {
    let n = pack_factor(bits);
    for (k, dst) in out.chunks_exact_mut(cols * 4).enumerate() {
        let first = k * n;
        let last = (first + n).min(rows);
        for (g, w) in dst.chunks_exact_mut(4).enumerate() {
            let column = (first..last).map(|r| q[r * cols + g]);
            w.copy_from_slice(&word(column, bits).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_words() {
        // §5.5: q = 0, -1, 0, 0, 6, 2, -2, 4 → 0xC6AE8878.
        let q: Vec<u8> = [0i8, -1, 0, 0, 6, 2, -2, 4].map(|v| v as u8).to_vec();
        let mut out = [0u8; 4];
        pack_columns(&q, 1, 8, 4, &mut out);
        assert_eq!(u32::from_le_bytes(out), 0xC6AE8878);
        // §5.6: zero points 0, -1, 0, -1, 0, 0, -1, 2 of rows 0..7 → 0xA7887878.
        let zp: Vec<u8> = [0i8, -1, 0, -1, 0, 0, -1, 2].map(|v| v as u8).to_vec();
        pack_rows(&zp, 8, 1, 4, &mut out);
        assert_eq!(u32::from_le_bytes(out), 0xA7887878);
        // 8 bits: the bytes are q ^ 0x80; a partial word is padded with u = 0.
        let q8: Vec<u8> = [-2i8, 127, -128].map(|v| v as u8).to_vec();
        let mut out8 = [0u8; 4];
        pack_columns(&q8, 1, 3, 8, &mut out8);
        assert_eq!(out8, [0x7E, 0xFF, 0x00, 0x00]);
    }
}
