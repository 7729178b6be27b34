//! The commands layer: each subcommand's arguments (clap) and the function that runs it, one
//! file per subcommand. Everything below this layer is the library and knows nothing of the
//! command line; a command may call several library pieces (`quantize --verify` is
//! [`crate::quantize::quantize`] then [`crate::runtime::verify::verify`]).

pub mod bench;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod make_model;
pub mod quantize;
pub mod verify;

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
    Quantize(quantize::QuantizeArgs),
    /// Write a seeded random BF16 Llama-shaped checkpoint (demos, benchmarks, tests).
    MakeModel(make_model::MakeModelArgs),
    /// Run a model on a chat prompt; with --reference, gate on its agreement with the reference.
    Verify(verify::VerifyArgs),
    /// Single-stream latency of use-case profiles (prompt/generated tokens), vs the seed's.
    Bench(bench::BenchArgs),
    /// CUDA backend checks and benchmarks (developer tool, used by scripts/gpu_check.sh).
    #[cfg(feature = "cuda")]
    #[command(hide = true)]
    Gpu(gpu::GpuArgs),
}

impl Cli {
    pub fn run(self) -> crate::Result<ExitCode> {
        match self.command {
            Command::Quantize(args) => quantize::run(&args),
            #[cfg(feature = "cuda")]
            Command::Gpu(args) => gpu::run(&args),
            Command::Bench(args) => bench::run(&args),
            Command::MakeModel(args) => make_model::run(&args),
            Command::Verify(args) => verify::run(&args),
        }
    }
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
    let bad =
        || format!("invalid size '{s}': use bytes or a number with KB, MB, GB, KiB, MiB or GiB");
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
