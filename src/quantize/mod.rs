//! The quantize pipeline: recipe → plan → per-tensor transform → streaming writer.
//!
//! 1. Read the recipe into a [`QuantPlan`]; open the checkpoint (mmapped, headers validated).
//! 2. List the model's Linear modules and assign each to a config group or leave it ignored.
//! 3. Lay out the output tensors in state-dict order and cut them into shards: every shard's
//!    header is known before a byte of data is computed.
//! 4. Stream: each tensor is read from the mmap in row blocks, quantized (or copied) and
//!    written at its final offset; input pages are released behind it, so peak memory does
//!    not grow with the model.
//! 5. Write config.json, recipe.yaml, tokenizer and generation files, then rename the staging
//!    directory into place.

mod layout;
mod sidecar;
mod stream;

pub use layout::{check_source, plan_layout, state_dict_cmp, OutputLayout, Transform};

use crate::checkpoint::writer::{self, ShardWriter};
use crate::checkpoint::Checkpoint;
use crate::numerics::Fp8Rounding;
use crate::output::{self, Staging};
use crate::progress::progress_bar;
use crate::recipe::RecipeSource;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to quantize, how, and where.
#[derive(Debug, Clone)]
pub struct QuantizeJob {
    /// A local model directory (hub ids are resolved before).
    pub model_dir: PathBuf,
    pub recipe: RecipeSource,
    pub output: PathBuf,
    pub max_shard_bytes: u64,
    pub force: bool,
    pub rounding: Fp8Rounding,
    /// Draw a progress bar (only ever drawn on a terminal).
    pub progress: bool,
}

impl QuantizeJob {
    /// A job with the defaults of the command line.
    pub fn new(
        model_dir: impl Into<PathBuf>,
        recipe: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> Self {
        QuantizeJob {
            model_dir: model_dir.into(),
            recipe: RecipeSource::File(recipe.into()),
            output: output.into(),
            max_shard_bytes: 20_000_000_000,
            force: false,
            rounding: Fp8Rounding::Eager,
            progress: false,
        }
    }
}

/// What a run wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub output: PathBuf,
    /// Files written, in name order.
    pub files: Vec<String>,
    pub tensors: usize,
    /// Linear modules quantized.
    pub quantized: usize,
    /// Linear modules left unquantized (the config.json `ignore` list).
    pub ignored: Vec<String>,
    /// Tensor bytes read (safetensors data, headers excluded).
    pub input_bytes: u64,
    /// Bytes of every file written (tensors, headers, config, tokenizer...).
    pub output_bytes: u64,
    /// Tensor bytes written (safetensors data, headers excluded): the like-for-like
    /// counterpart of `input_bytes`.
    pub output_tensor_bytes: u64,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Quantizes `job.model_dir` with `job.recipe` into `job.output`.
pub fn quantize(job: &QuantizeJob) -> Result<Summary> {
    let start = Instant::now();
    output::check_not_input(&job.output, &job.model_dir)?;
    let recipe = job.recipe.load()?;
    // Round-to-nearest is not what a calibrated recipe asks for: never write it as such.
    if let Some(modifier) = recipe.requires_calibration() {
        return Err(Error::Unsupported(format!(
            "{modifier} needs calibration data, which qforge does not support yet"
        )));
    }
    let plan = recipe.plan()?;
    let ck = Checkpoint::open(&job.model_dir)?;
    let layout = plan_layout(&ck, &plan)?;
    let staging = Staging::new(&job.output, job.force)?;

    let shards = writer::plan_shards(&layout.out_tensors(), job.max_shard_bytes);
    staging.ensure_space(shards.iter().map(|s| s.data_bytes()).sum())?;
    write_shards(&ck, &layout, &shards, staging.path(), job)?;
    write_side_files(
        &staging,
        &shards,
        &ck,
        &plan,
        &layout.ignored,
        &recipe,
        &job.model_dir,
    )?;

    let mut files = list_files(staging.path())?;
    files.sort();
    let output_bytes = dir_bytes(staging.path(), &files);
    let output = staging.commit()?;
    Ok(Summary {
        output,
        files,
        tensors: shards.iter().map(|s| s.tensors.len()).sum(),
        quantized: layout.quantized,
        ignored: layout.ignored.clone(),
        input_bytes: layout.items.iter().map(|i| i.input.nbytes() as u64).sum(),
        output_bytes,
        output_tensor_bytes: shards.iter().map(|s| s.data_bytes()).sum(),
        seconds: start.elapsed().as_secs_f64(),
        warnings: layout.warnings.clone(),
    })
}

/// Streams every shard: creates each writer (header first), produces the items whose outputs
/// it holds, then finishes it. An item's outputs may straddle two shards, so all writers stay
/// open until the end (they hold no data, only a file handle).
fn write_shards(
    ck: &Checkpoint,
    layout: &OutputLayout,
    shards: &[writer::ShardPlan],
    dir: &Path,
    job: &QuantizeJob,
) -> Result<()> {
    let writers = shards
        .iter()
        .map(|s| ShardWriter::create(&dir.join(&s.file_name), s))
        .collect::<Result<Vec<_>>>()?;
    let shard_of: std::collections::HashMap<&str, usize> = shards
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.tensors.iter().map(move |t| (t.name.as_str(), i)))
        .collect();
    let total: u64 = layout.items.iter().map(|i| i.input.nbytes() as u64).sum();
    let bar = progress_bar("quantizing", total, job.progress);
    let mut scratch = stream::Scratch::default();
    for item in &layout.items {
        let sinks: stream::Sinks = item
            .outputs
            .iter()
            .map(|o| &writers[shard_of[o.name.as_str()]])
            .collect();
        stream::produce(ck, item, &sinks, job.rounding, &mut scratch, &|n| {
            bar.inc(n)
        })?;
    }
    bar.finish_and_clear();
    for w in writers {
        w.finish()?;
    }
    Ok(())
}

/// Writes everything beside the tensors: the shard index (when sharded), `config.json` with
/// the `quantization_config`, `recipe.yaml`, and the tokenizer and generation files.
pub fn write_side_files(
    staging: &Staging,
    shards: &[writer::ShardPlan],
    ck: &Checkpoint,
    plan: &crate::recipe::QuantPlan,
    ignored: &[String],
    recipe: &crate::recipe::Recipe,
    model_dir: &Path,
) -> Result<()> {
    if shards.len() > 1 {
        staging.write("model.safetensors.index.json", writer::index_json(shards))?;
    }
    let qconfig = plan.quantization_config(ignored);
    staging.write(
        "config.json",
        crate::format::model_config(&ck.config, &qconfig),
    )?;
    staging.write("recipe.yaml", recipe.to_yaml())?;
    sidecar::copy_sidecar_files(model_dir, staging)
}

fn list_files(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

fn dir_bytes(dir: &Path, files: &[String]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
