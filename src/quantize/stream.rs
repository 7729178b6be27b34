//! Producing the output tensors: each input tensor is read from the mmap in row blocks,
//! transformed, and written at its final offset, with the input pages released behind it,
//! so memory stays at a few blocks whatever the model size.

use super::layout::{Item, Transform};
use crate::checkpoint::writer::ShardWriter;
use crate::checkpoint::{Checkpoint, DType};
use crate::quant::{self, Fp8Rounding};
use crate::recipe::Scheme;
use crate::{Error, Result};

/// Input bytes handled per block (a multiple of whole rows; at least one row).
const BLOCK_BYTES: usize = 16 << 20;

/// Reusable scratch space for one worker.
#[derive(Default)]
pub struct Scratch {
    codes: Vec<u8>,
    scales: Vec<u8>,
}

/// Where each output tensor of an item goes: the writer of the shard that holds it.
pub type Sinks<'a> = Vec<&'a ShardWriter>;

/// Produces every output tensor of `item`, writing each through `sinks[k]` (one per output).
/// `progress` is called with the number of input bytes consumed.
pub fn produce(
    ck: &Checkpoint,
    item: &Item,
    sinks: &Sinks,
    rounding: Fp8Rounding,
    scratch: &mut Scratch,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let data = ck.data(&item.input);
    match &item.transform {
        Transform::Copy => {
            for (i, block) in data.chunks(BLOCK_BYTES).enumerate() {
                sinks[0].write_at(&item.outputs[0].name, (i * BLOCK_BYTES) as u64, block)?;
                ck.release_range(&item.input, i * BLOCK_BYTES..i * BLOCK_BYTES + block.len());
                progress(block.len() as u64);
            }
        }
        Transform::Quantize {
            scheme: Scheme::Fp8Dynamic,
        } => {
            fp8_dynamic(ck, item, sinks, rounding, scratch, progress)?;
        }
    }
    Ok(())
}

fn fp8_dynamic(
    ck: &Checkpoint,
    item: &Item,
    sinks: &Sinks,
    rounding: Fp8Rounding,
    scratch: &mut Scratch,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let t = &item.input;
    let (rows, cols, dsz) = (t.shape[0], t.shape[1], t.dtype.size());
    let row_bytes = cols * dsz;
    let block_rows = (BLOCK_BYTES / row_bytes.max(1)).max(1);
    let data = ck.data(t);
    let mut row = 0;
    while row < rows {
        let n = block_rows.min(rows - row);
        let block = &data[row * row_bytes..(row + n) * row_bytes];
        scratch.codes.resize(n * cols, 0);
        scratch.scales.resize(n * dsz, 0);
        quant::quantize_fp8_channel_into(
            &t.name,
            t.dtype,
            block,
            n,
            cols,
            rounding,
            &mut scratch.codes,
            &mut scratch.scales,
        )
        .map_err(|e| locate_bad_row(ck, item, block, row, e))?;
        sinks[0].write_at(&item.outputs[0].name, (row * cols) as u64, &scratch.codes)?;
        sinks[1].write_at(&item.outputs[1].name, (row * dsz) as u64, &scratch.scales)?;
        ck.release_range(t, row * row_bytes..row * row_bytes + block.len());
        progress(block.len() as u64);
        row += n;
    }
    Ok(())
}

/// The quantizer reports rows relative to the block; name the row in the whole tensor and
/// the file it came from.
fn locate_bad_row(
    ck: &Checkpoint,
    item: &Item,
    block: &[u8],
    first_row: usize,
    err: Error,
) -> Error {
    let t = &item.input;
    let cols = t.shape[1];
    let bad = block
        .chunks(cols * t.dtype.size())
        .position(|r| !row_is_finite(t.dtype, r));
    match bad {
        Some(r) => Error::Quantize(format!(
            "{}: tensor {} row {} contains NaN or Inf; cannot quantize",
            ck.files()[t.file].display(),
            t.name,
            first_row + r
        )),
        None => err,
    }
}

fn row_is_finite(dtype: DType, row: &[u8]) -> bool {
    quant::to_f32(dtype, row)
        .map(|v| v.iter().all(|x| x.is_finite()))
        .unwrap_or(false)
}
