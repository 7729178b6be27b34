//! The block transform of each scheme: quantize `n` rows starting at `row`, then write each
//! output at the byte offset those rows occupy in it. Blocks start on a multiple of the
//! scheme's row alignment (see `row_align`), so every offset below is exact.

use super::{Job, Scratch};
use crate::numerics::{self, pack, IntParams};
use crate::quantize::layout::int_bits;
use crate::recipe::Scheme;
use crate::Result;

/// Outputs that do not depend on the rows: `weight_shape` and `weight_global_scale`.
pub(super) fn write_once(job: &Job, scheme: Scheme) -> Result<()> {
    match scheme {
        Scheme::W8A16 | Scheme::W4A16 | Scheme::W4A16Asym => {
            let mut shape = (job.rows() as i64).to_le_bytes().to_vec();
            shape.extend_from_slice(&(job.cols() as i64).to_le_bytes());
            job.out.write("weight_shape", 0, &shape)
        }
        Scheme::Nvfp4A16 => {
            let gs = job.global_scale.unwrap_or(1.0);
            job.out.write("weight_global_scale", 0, &gs.to_le_bytes())
        }
        _ => Ok(()),
    }
}

/// Quantizes rows `row..row+n` (`block` holds their input bytes) and writes them.
pub(super) fn quantize_block(
    job: &Job,
    scheme: Scheme,
    block: &[u8],
    row: usize,
    n: usize,
    s: &mut Scratch,
) -> Result<()> {
    match scheme {
        Scheme::Fp8Dynamic => fp8_channel(job, block, row, n, s),
        Scheme::Fp8Block => fp8_block(job, block, row, n, s),
        Scheme::W8A8 => int_rows(job, block, row, n, s, None),
        Scheme::W8A16 | Scheme::W4A16 | Scheme::W4A16Asym => {
            let symmetric = scheme != Scheme::W4A16Asym;
            int_rows(job, block, row, n, s, Some((int_bits(scheme), symmetric)))
        }
        Scheme::Nvfp4A16 => nvfp4(job, block, row, n, s),
        Scheme::Mxfp4A16 => mxfp4(job, block, row, n, s),
    }
}

fn fp8_channel(job: &Job, block: &[u8], row: usize, n: usize, s: &mut Scratch) -> Result<()> {
    let (t, cols, dsz) = (job.t, job.cols(), job.t.dtype.size());
    s.codes.resize(n * cols, 0);
    s.scales.resize(n * dsz, 0);
    numerics::quantize_fp8_channel_into(
        &t.name,
        t.dtype,
        block,
        n,
        cols,
        job.rounding,
        &mut s.codes,
        &mut s.scales,
    )?;
    job.out.write("weight", row * cols, &s.codes)?;
    job.out.write("weight_scale", row * dsz, &s.scales)
}

fn fp8_block(job: &Job, block: &[u8], row: usize, n: usize, s: &mut Scratch) -> Result<()> {
    const B: usize = 128;
    let (t, cols, dsz) = (job.t, job.cols(), job.t.dtype.size());
    let grid_cols = cols.div_ceil(B);
    s.codes.resize(n * cols, 0);
    s.scales.resize(n.div_ceil(B) * grid_cols * dsz, 0);
    numerics::quantize_fp8_block_into(
        &t.name,
        t.dtype,
        block,
        n,
        cols,
        [B, B],
        job.rounding,
        &mut s.codes,
        &mut s.scales,
    )?;
    job.out.write("weight", row * cols, &s.codes)?;
    job.out
        .write("weight_scale", row / B * grid_cols * dsz, &s.scales)
}

/// Integer schemes: W8A8 (`packing: None`: per channel, int8 codes stored as I8) or the
/// packed group-128 ones (`Some((bits, symmetric))`).
fn int_rows(
    job: &Job,
    block: &[u8],
    row: usize,
    n: usize,
    s: &mut Scratch,
    packing: Option<(u32, bool)>,
) -> Result<()> {
    let (t, cols, dsz) = (job.t, job.cols(), job.t.dtype.size());
    let p = match packing {
        None => IntParams {
            bits: 8,
            group: cols,
            symmetric: true,
        },
        Some((bits, symmetric)) => IntParams {
            bits,
            group: 128,
            symmetric,
        },
    };
    let groups = cols / p.group.max(1);
    s.codes.resize(n * cols, 0);
    s.scales.resize(n * groups * dsz, 0);
    s.zps.resize(n * groups, 0);
    numerics::quantize_int_into(
        &t.name,
        t.dtype,
        block,
        n,
        cols,
        p,
        job.rounding,
        &mut s.codes,
        &mut s.scales,
        &mut s.zps,
    )?;
    job.out
        .write("weight_scale", row * groups * dsz, &s.scales)?;
    if packing.is_none() {
        return job.out.write("weight", row * cols, &s.codes);
    }
    let words = pack::packed_len(cols, p.bits);
    s.packed.resize(n * words * 4, 0);
    pack::pack_columns(&s.codes, n, cols, p.bits, &mut s.packed);
    job.out.write("weight_packed", row * words * 4, &s.packed)?;
    if p.symmetric {
        return Ok(());
    }
    s.packed.resize(pack::packed_len(n, p.bits) * groups * 4, 0);
    pack::pack_rows(&s.zps, n, groups, p.bits, &mut s.packed);
    let zp_row = row / pack::pack_factor(p.bits);
    job.out
        .write("weight_zero_point", zp_row * groups * 4, &s.packed)
}

fn nvfp4(job: &Job, block: &[u8], row: usize, n: usize, s: &mut Scratch) -> Result<()> {
    let (t, cols) = (job.t, job.cols());
    let groups = cols / numerics::fp4::NVFP4_GROUP;
    s.packed.resize(n * cols / 2, 0);
    s.scales.resize(n * groups, 0);
    let gs = job.global_scale.unwrap_or(1.0);
    numerics::quantize_nvfp4_into(
        &t.name,
        t.dtype,
        block,
        n,
        cols,
        gs,
        &mut s.packed,
        &mut s.scales,
    )?;
    job.out.write("weight_packed", row * cols / 2, &s.packed)?;
    job.out.write("weight_scale", row * groups, &s.scales)
}

fn mxfp4(job: &Job, block: &[u8], row: usize, n: usize, s: &mut Scratch) -> Result<()> {
    let (t, cols) = (job.t, job.cols());
    let groups = cols / numerics::fp4::MXFP4_GROUP;
    s.packed.resize(n * cols / 2, 0);
    s.scales.resize(n * groups, 0);
    numerics::quantize_mxfp4_into(
        &t.name,
        t.dtype,
        block,
        n,
        cols,
        job.rounding,
        &mut s.packed,
        &mut s.scales,
    )?;
    job.out.write("weight_packed", row * cols / 2, &s.packed)?;
    job.out.write("weight_scale", row * groups, &s.scales)
}
