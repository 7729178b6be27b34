//! `qforge bench`: the command line of [`bench::run`].

use crate::bench::{self, BenchOptions};
use crate::recipe::Scheme;
use crate::runtime::Device;
use crate::{Error, Result};
use std::process::ExitCode;

/// `qforge bench` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    qforge bench --model out/tiny-fp8 --profiles 32/16,64/32\n  \
    qforge bench --synthetic llama-8b --synthetic-scheme w4a16 --device cuda\n  \
    qforge bench --model RedHatAI/DeepSeek-R1-Distill-Llama-70B-FP8-dynamic --json > bench.json")]
pub struct BenchArgs {
    /// Model directory or Hugging Face repo id (org/name).
    #[arg(long, value_name = super::MODEL_VALUE, conflicts_with = "synthetic")]
    pub model: Option<String>,
    /// Instead of --model: a random model of this shape (FP8_DYNAMIC, or --synthetic-scheme)
    /// built directly in memory (GPU memory on CUDA): llama-70b, llama-8b, llama-1b, or a
    /// config.json path.
    #[arg(long, value_name = "SHAPE|CONFIG_JSON")]
    pub synthetic: Option<String>,
    /// The quantization of the --synthetic model. On the CPU, weight-only schemes (w4a16,
    /// w4a16_asym, w8a16, nvfp4a16, mxfp4a16) run as BF16, as the CPU runtime runs such
    /// checkpoints (dequantized at load); CUDA runs them packed.
    #[arg(
        long,
        value_enum,
        default_value_t = Scheme::Fp8Dynamic,
        value_name = "SCHEME",
        requires = "synthetic"
    )]
    pub synthetic_scheme: Scheme,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Profiles PROMPT/GENERATED, comma-separated; `seed` = the eight of the
    /// DeepSeek-R1-Distill-Llama-70B FP8-dynamic model card (whose vLLM latencies are shown
    /// beside a model of that shape). Each must fit the model's context (PROMPT + GENERATED
    /// <= max_position_embeddings).
    #[arg(long, default_value = "seed", value_name = "LIST")]
    pub profiles: String,
    /// Print JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Seed of the random weights (--synthetic).
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub seed: u64,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

impl From<&BenchArgs> for BenchOptions {
    fn from(a: &BenchArgs) -> Self {
        BenchOptions {
            model: a.model.clone(),
            synthetic: a.synthetic.clone(),
            synthetic_scheme: a.synthetic_scheme,
            device: a.device,
            profiles: a.profiles.clone(),
            seed: a.seed,
            revision: a.revision.clone(),
        }
    }
}

/// Runs `qforge bench`.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let report = bench::run(&BenchOptions::from(args))?;
    let table = report.table();
    if args.json {
        eprint!("{table}");
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Output(format!("cannot write the JSON report: {e}")))?;
        println!("{text}");
    } else {
        print!("{table}");
    }
    Ok(ExitCode::SUCCESS)
}
