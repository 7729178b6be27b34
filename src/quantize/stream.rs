//! Producing the output tensors: each input tensor is read from the mmap in row blocks,
//! transformed, and written at its final offset, with the input pages released behind it,
//! so memory stays at a few blocks whatever the model size. The per-scheme block
//! transforms live in [`schemes`].

mod schemes;

use super::layout::{Item, Transform};
use crate::checkpoint::writer::ShardWriter;
use crate::checkpoint::{Checkpoint, DType, TensorInfo};
use crate::numerics::{self, Fp8Rounding};
use crate::recipe::Scheme;
use crate::{Error, Result};

/// Input bytes handled per block (a multiple of whole rows; at least one row).
const BLOCK_BYTES: usize = 16 << 20;

/// Reusable scratch space for one worker.
#[derive(Default)]
pub struct Scratch {
    codes: Vec<u8>,
    scales: Vec<u8>,
    zps: Vec<u8>,
    packed: Vec<u8>,
}

/// Where each output tensor of an item goes: the writer of the shard that holds it.
pub type Sinks<'a> = Vec<&'a ShardWriter>;

/// The output tensors of one quantized item, addressed by suffix (`weight_scale`, ...).
struct Outputs<'a> {
    item: &'a Item,
    sinks: &'a Sinks<'a>,
}

impl Outputs<'_> {
    /// Writes `bytes` at byte `offset` of the output `<module>.<suffix>`.
    fn write(&self, suffix: &str, offset: usize, bytes: &[u8]) -> Result<()> {
        let t = &self.item.input.name;
        let name = format!("{}.{suffix}", t.strip_suffix(".weight").unwrap_or(t));
        let k = self
            .item
            .outputs
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| Error::Output(format!("{t}: no output tensor {name} planned")))?;
        self.sinks[k].write_at(&name, offset as u64, bytes)
    }
}

/// What a block transform needs to know about its tensor.
struct Job<'a> {
    t: &'a TensorInfo,
    out: Outputs<'a>,
    rounding: Fp8Rounding,
    global_scale: Option<f32>,
}

impl Job<'_> {
    fn rows(&self) -> usize {
        self.t.shape[0]
    }

    fn cols(&self) -> usize {
        self.t.shape[1]
    }
}

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
            scheme,
            global_scale,
        } => {
            let job = Job {
                t: &item.input,
                out: Outputs { item, sinks },
                rounding,
                global_scale: *global_scale,
            };
            quantize_rows(ck, &job, *scheme, scratch, progress)?;
        }
    }
    Ok(())
}

/// Rows a block must hold a multiple of, so that no scale or packed word spans two
/// blocks: a block row of FP8_BLOCK, a packed zero-point word of W4A16_ASYM.
fn row_align(scheme: Scheme) -> usize {
    match scheme {
        Scheme::Fp8Block => 128,
        Scheme::W4A16Asym => numerics::pack::pack_factor(4),
        _ => 1,
    }
}

/// Streams a quantized weight through the scheme's block transform in row blocks.
fn quantize_rows(
    ck: &Checkpoint,
    job: &Job,
    scheme: Scheme,
    scratch: &mut Scratch,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let t = job.t;
    let (rows, row_bytes) = (job.rows(), job.cols() * t.dtype.size());
    let align = row_align(scheme);
    let block_rows = ((BLOCK_BYTES / row_bytes.max(1)) / align).max(1) * align;
    schemes::write_once(job, scheme)?;
    let data = ck.data(t);
    let mut row = 0;
    while row < rows {
        let n = block_rows.min(rows - row);
        let block = &data[row * row_bytes..(row + n) * row_bytes];
        schemes::quantize_block(job, scheme, block, row, n, scratch)
            .map_err(|e| locate_bad_row(ck, t, block, row, e))?;
        ck.release_range(t, row * row_bytes..row * row_bytes + block.len());
        progress(block.len() as u64);
        row += n;
    }
    Ok(())
}

/// The quantizers report rows relative to the block; name the row in the whole tensor and
/// the file it came from. Other errors pass through.
pub(super) fn locate_bad_row(
    ck: &Checkpoint,
    t: &TensorInfo,
    block: &[u8],
    first_row: usize,
    err: Error,
) -> Error {
    let cols = t.shape.get(1).copied().unwrap_or(0).max(1);
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
    numerics::to_f32(dtype, row)
        .map(|v| v.iter().all(|x| x.is_finite()))
        .unwrap_or(false)
}
