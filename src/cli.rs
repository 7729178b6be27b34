//! Command-line definitions only. Each subcommand's arguments live next to the library
//! function that runs it; this file just lists the subcommands.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Quantize Hugging Face checkpoints to compressed-tensors, byte-identical to llm-compressor,
/// and verify the result with qforge's own FP8 runtime.
#[derive(Debug, Parser)]
#[command(
    name = "qforge",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Typical use:\n  \
    qforge quantize --model deepseek-ai/DeepSeek-R1-Distill-Llama-70B --recipe recipes/fp8_dynamic.yaml --output out/r1-70b-fp8\n  \
    qforge verify --model out/r1-70b-fp8 --reference deepseek-ai/DeepSeek-R1-Distill-Llama-70B --prompt \"What is the capital of France?\"\n  \
    qforge bench --model out/r1-70b-fp8 --profiles seed\n\n\
    Run `qforge <COMMAND> --help` for each command's options and examples."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Quantize a BF16/F16/F32 checkpoint with an llm-compressor recipe.
    Quantize(qforge::quantize::QuantizeArgs),
    /// Write a seeded random BF16 Llama-shaped checkpoint (demos, benchmarks, tests).
    MakeModel(qforge::synthetic::MakeModelArgs),
    /// Run a model on a chat prompt; with --reference, gate on its agreement with the reference.
    Verify(qforge::runtime::verify::VerifyArgs),
    /// Single-stream latency of use-case profiles (prompt/generated tokens), vs the seed's.
    Bench(qforge::bench::BenchArgs),
    /// CUDA backend checks and benchmarks (developer tool, used by scripts/gpu_check.sh).
    #[cfg(feature = "cuda")]
    #[command(hide = true)]
    Gpu(qforge::runtime::cuda::cli::GpuArgs),
}

impl Cli {
    pub fn run(self) -> qforge::Result<ExitCode> {
        match self.command {
            Command::Quantize(args) => qforge::quantize::run_cli(&args),
            #[cfg(feature = "cuda")]
            Command::Gpu(args) => qforge::runtime::cuda::cli::run(&args),
            Command::Bench(args) => qforge::bench::run_cli(&args),
            Command::MakeModel(args) => qforge::synthetic::run_cli(&args),
            Command::Verify(args) => qforge::runtime::verify::run_cli(&args),
        }
    }
}
