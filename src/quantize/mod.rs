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
mod output;
mod sidecar;
mod stream;

pub use layout::{plan_layout, state_dict_cmp, OutputLayout, Transform};
pub use output::Staging;

use crate::checkpoint::hub::{self, HubOptions};
use crate::checkpoint::writer::{self, ShardWriter};
use crate::checkpoint::Checkpoint;
use crate::quant::Fp8Rounding;
use crate::recipe::Recipe;
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// `qforge quantize` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    qforge quantize --model fixtures/tiny-random-llama --recipe recipes/fp8_dynamic.yaml --output out/tiny-fp8\n  \
    qforge quantize --model deepseek-ai/DeepSeek-R1-Distill-Llama-70B --recipe recipes/fp8_dynamic.yaml \\\n    \
    --output DeepSeek-R1-Distill-Llama-70B-FP8-dynamic --verify \"What is the capital of France?\"")]
pub struct QuantizeArgs {
    /// Source model: a local directory (config.json + *.safetensors) or a Hub repo id (org/name).
    #[arg(long, value_name = "DIR|REPO")]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// llm-compressor recipe YAML (e.g. recipes/fp8_dynamic.yaml).
    #[arg(long, value_name = "YAML")]
    pub recipe: PathBuf,
    /// Output directory; written to a temporary sibling and renamed into place when complete.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Largest safetensors shard, as transformers spells it (20GB = 20e9 bytes, 5GiB, 500MB).
    #[arg(long, default_value = "20GB", value_name = "SIZE", value_parser = parse_size)]
    pub max_shard_size: u64,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Replace --output if it exists (the old one is kept until the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Print a machine-readable JSON summary on stdout instead of the human one.
    #[arg(long)]
    pub json: bool,
    /// FP8 rounding: `eager` = llm-compressor's CPU path (bf16 intermediate, the verified
    /// default); `direct` = its Hopper/triton path (f32 → e4m3 in one rounding, ~3% of codes differ).
    #[arg(long, value_enum, default_value = "eager", value_name = "MODE")]
    pub fp8_rounding: RoundingArg,
}

/// `--fp8-rounding` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoundingArg {
    Eager,
    Direct,
}

impl From<RoundingArg> for Fp8Rounding {
    fn from(r: RoundingArg) -> Self {
        match r {
            RoundingArg::Eager => Fp8Rounding::Eager,
            RoundingArg::Direct => Fp8Rounding::Direct,
        }
    }
}

/// What to quantize, how, and where.
#[derive(Debug, Clone)]
pub struct QuantizeJob {
    /// A local model directory (hub ids are resolved before).
    pub model_dir: PathBuf,
    pub recipe: PathBuf,
    pub output: PathBuf,
    pub max_shard_bytes: u64,
    pub force: bool,
    pub rounding: Fp8Rounding,
    /// Draw a progress bar (only ever drawn on a terminal).
    pub progress: bool,
}

impl QuantizeJob {
    /// A job with the defaults of the command line.
    pub fn new(model_dir: impl Into<PathBuf>, recipe: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        QuantizeJob {
            model_dir: model_dir.into(),
            recipe: recipe.into(),
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
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Runs `qforge quantize` from the command line.
pub fn run_cli(args: &QuantizeArgs) -> Result<ExitCode> {
    if let Some(n) = args.threads {
        set_threads(n)?;
    }
    let progress = !args.json;
    let hub_opts = HubOptions { revision: args.revision.clone(), progress };
    let model_dir = hub::resolve_model(&args.model, &hub_opts)?;
    let job = QuantizeJob {
        model_dir,
        recipe: args.recipe.clone(),
        output: args.output.clone(),
        max_shard_bytes: args.max_shard_size,
        force: args.force,
        rounding: args.fp8_rounding.into(),
        progress,
    };
    let summary = quantize(&job)?;
    if args.json {
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::Output(format!("cannot encode the summary: {e}")))?;
        println!("{text}");
    } else {
        print_summary(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Output("--threads must be at least 1".into()));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::Output(format!("--threads {n}: {e}")))
}

fn print_summary(s: &Summary) {
    for w in &s.warnings {
        eprintln!("qforge: warning: {w}");
    }
    let gb = s.input_bytes as f64 / 1e9;
    println!(
        "wrote {}: {} tensors, {} Linear modules quantized, ignored {:?}",
        s.output.display(),
        s.tensors,
        s.quantized,
        s.ignored
    );
    println!(
        "{:.3} GB in, {:.3} GB out, {:.2} s ({:.2} GB/s); files: {}",
        gb,
        s.output_bytes as f64 / 1e9,
        s.seconds,
        gb / s.seconds.max(1e-9),
        s.files.join(", ")
    );
}

/// Quantizes `job.model_dir` with `job.recipe` into `job.output`.
pub fn quantize(job: &QuantizeJob) -> Result<Summary> {
    let start = Instant::now();
    let recipe = Recipe::from_file(&job.recipe)?;
    let plan = recipe.plan()?;
    let ck = Checkpoint::open(&job.model_dir)?;
    let layout = plan_layout(&ck, &plan)?;
    let staging = Staging::new(&job.output, job.force)?;

    let shards = writer::plan_shards(&layout.out_tensors(), job.max_shard_bytes);
    write_shards(&ck, &layout, &shards, staging.path(), job)?;
    if shards.len() > 1 {
        staging.write("model.safetensors.index.json", writer::index_json(&shards))?;
    }
    let qconfig = plan.quantization_config(&layout.ignored);
    staging.write("config.json", crate::format::model_config(&ck.config, &qconfig))?;
    staging.write("recipe.yaml", recipe.to_yaml())?;
    sidecar::copy_sidecar_files(&job.model_dir, &staging)?;

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
    let bar = progress_bar(total, job.progress);
    let mut scratch = stream::Scratch::default();
    for item in &layout.items {
        let sinks: stream::Sinks = item.outputs.iter().map(|o| &writers[shard_of[o.name.as_str()]]).collect();
        stream::produce(ck, item, &sinks, job.rounding, &mut scratch, &|n| bar.inc(n))?;
    }
    bar.finish_and_clear();
    for w in writers {
        w.finish()?;
    }
    Ok(())
}

fn progress_bar(total: u64, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "quantizing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
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
    files.iter().filter_map(|f| std::fs::metadata(dir.join(f)).ok()).map(|m| m.len()).sum()
}

/// Parses a size the way transformers' `convert_file_size_to_int` does: a plain integer is
/// bytes; KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024 (case-insensitive).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let units: [(&str, u64); 8] = [
        ("KIB", 1 << 10),
        ("MIB", 1 << 20),
        ("GIB", 1 << 30),
        ("TIB", 1 << 40),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
    ];
    let bad = || format!("invalid size '{s}': use bytes or a number with KB, MB, GB, KiB, MiB or GiB");
    for (unit, mult) in units {
        if let Some(num) = upper.strip_suffix(unit) {
            let v: f64 = num.trim().parse().map_err(|_| bad())?;
            if !(v > 0.0 && v.is_finite()) {
                return Err(bad());
            }
            return Ok((v * mult as f64) as u64);
        }
    }
    let v: u64 = t.parse().map_err(|_| bad())?;
    if v == 0 {
        return Err(bad());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("20GB"), Ok(20_000_000_000));
        assert_eq!(parse_size("5GiB"), Ok(5 << 30));
        assert_eq!(parse_size("500mb"), Ok(500_000_000));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1GB").is_err());
    }
}
