//! `qforge make-model`: writes a seeded random Llama-shaped checkpoint ([`synthetic`]).

use crate::output::Staging;
use crate::synthetic;
use crate::{Error, Result};

/// `qforge make-model` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    qforge make-model --output out/tiny-bf16\n  \
    qforge make-model --shape llama-1b --tokenizer-from fixtures/tiny-random-llama --output out/llama-1b-bf16\n  \
    qforge quantize --model out/llama-1b-bf16 --recipe fp8_dynamic --output out/llama-1b-fp8")]
pub struct MakeModelArgs {
    /// Shape: tiny, llama-1b, llama-8b or llama-70b.
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// Decoder layers, instead of the shape's own count (a llama-1b shape with 2 layers
    /// measures the per-layer costs of a calibration: its peak memory does not depend on
    /// depth).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub layers: Option<u64>,
    /// Output directory (must not exist unless --force).
    #[arg(long, value_name = "DIR")]
    pub output: std::path::PathBuf,
    /// Random seed; the same seed always writes the same bytes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Copy tokenizer and chat-template files from this model directory (vocab sizes must match).
    #[arg(long, value_name = "DIR")]
    pub tokenizer_from: Option<std::path::PathBuf>,
    /// Largest safetensors shard, as transformers spells it (20GB = 20e9 bytes, 5GiB, 500MB).
    #[arg(
        long,
        default_value = super::DEFAULT_MAX_SHARD_SIZE,
        value_name = "SIZE",
        value_parser = super::parse_size
    )]
    pub max_shard_size: u64,
    /// Replace --output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs `qforge make-model`.
pub fn run(args: &MakeModelArgs) -> Result<std::process::ExitCode> {
    let mut shape = synthetic::named_shape(&args.shape).ok_or_else(|| {
        Error::Unsupported(format!(
            "unknown shape {}: use one of {}",
            args.shape,
            synthetic::SHAPE_NAMES
        ))
    })?;
    if let Some(n) = args.layers {
        shape.layers = n as usize;
    }
    let staging = Staging::new(&args.output, args.force)?;
    staging.ensure_space(shape.tensors().iter().map(|t| t.nbytes()).sum())?;
    synthetic::write_checkpoint(&shape, staging.path(), args.seed, args.max_shard_size)?;
    if let Some(src) = &args.tokenizer_from {
        synthetic::copy_tokenizer(src, staging.path())?;
    }
    let out = staging.commit()?;
    println!(
        "wrote {} ({} parameters)",
        out.display(),
        shape.parameters()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
