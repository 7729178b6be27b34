//! `qforge bench`: single-stream latency of use-case profiles (prompt / generated tokens) on a
//! checkpoint or on a random model built in memory (`--synthetic`, FP8_DYNAMIC by default),
//! with time to first token, decode speed as % of the memory-bandwidth roofline, and the seed
//! model card's 2×H100 figures beside seed-shaped models.

pub mod profile;
pub mod report;
pub mod runner;
pub mod synth;

#[cfg(feature = "cuda")]
pub mod cuda;

use crate::checkpoint::hub::{resolve_model, HubOptions};
use crate::runtime::config::ModelConfig;
use crate::runtime::cpu::{CpuModel, CpuOptions};
use crate::runtime::generate::{resolve_device, Device};
use crate::runtime::weights::Weights;
use crate::synthetic::SyntheticScheme;
use crate::{Error, Result};
use profile::{parse_profiles, Profile};
use report::{BenchReport, Row};
use runner::{BenchModel, CpuBench};
use std::path::Path;
use std::process::ExitCode;

/// `qforge bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model directory or Hugging Face repo id (org/name).
    #[arg(long, value_name = "DIR|HUB_ID", conflicts_with = "synthetic")]
    pub model: Option<String>,
    /// Instead of --model: a random model of this shape (FP8_DYNAMIC, or --synthetic-scheme)
    /// built directly in memory (GPU memory on CUDA): llama-70b, llama-8b, llama-1b, or a
    /// config.json path.
    #[arg(long, value_name = "SHAPE|CONFIG_JSON")]
    pub synthetic: Option<String>,
    /// The quantization of the --synthetic model. On the CPU, weight-only schemes (w4a16,
    /// w4a16_asym, w8a16, nvfp4a16, mxfp4a16) run as BF16, as the CPU runtime runs such
    /// checkpoints (dequantized at load); CUDA runs them packed.
    #[arg(long, value_enum, default_value_t = SyntheticScheme::Fp8Dynamic, requires = "synthetic")]
    pub synthetic_scheme: SyntheticScheme,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Profiles PROMPT/GENERATED, comma-separated; `seed` = the model card's eight. Each must
    /// fit the model's context (PROMPT + GENERATED <= max_position_embeddings).
    #[arg(long, default_value = "seed")]
    pub profiles: String,
    /// Print JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Seed of the random weights (--synthetic).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Hub revision for a repo id.
    #[arg(long)]
    pub revision: Option<String>,
}

/// Runs `qforge bench`.
pub fn run_cli(args: &BenchArgs) -> Result<ExitCode> {
    let report = run(args)?;
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

/// Loads (or builds) the model, then times every profile.
pub fn run(args: &BenchArgs) -> Result<BenchReport> {
    let profiles = parse_profiles(&args.profiles)?;
    let max_seq = profiles
        .iter()
        .map(|p| p.prompt + p.generate)
        .max()
        .unwrap_or(1);
    let device = resolve_device(args.device)?;
    let (name, cfg, dir) = source(args, device)?;
    check_context(&profiles, &cfg)?;
    let seed = synth::is_seed_shape(&cfg)
        || name
            .to_ascii_lowercase()
            .contains("deepseek-r1-distill-llama-70b");
    let (mut model, bw, bw_source) = match device {
        Device::Cuda => cuda_model(&cfg, dir.as_deref(), args, max_seq)?,
        Device::Auto | Device::Cpu => {
            // Measured first, before the model takes its memory.
            let bw = runner::cpu_copy_bandwidth();
            let m = cpu_model(cfg, dir.as_deref(), args, max_seq)?;
            (
                Box::new(m) as Box<dyn BenchModel>,
                bw,
                "measured 256 MiB copy".to_string(),
            )
        }
    };
    let bytes = model.bytes_per_token();
    runner::warm_up(model.as_mut(), profiles[0].prompt.min(16))?;
    let mut rows = Vec::with_capacity(profiles.len());
    for &p in &profiles {
        if device == Device::Cuda {
            // GEMM plans for this prompt length are made outside the timed run.
            runner::warm_up(model.as_mut(), p.prompt)?;
        }
        let t = runner::run_profile(model.as_mut(), p)?;
        // Logged as each profile ends: a run cut off by a time limit still shows these.
        match profile::seed_latency(p).filter(|_| seed) {
            Some(card) => eprintln!("  {p}: {:.3} s (seed card, 2×H100: {card} s)", t.latency_s),
            None => eprintln!("  {p}: {:.3} s", t.latency_s),
        }
        rows.push(Row::new(p, t, bytes, bw, seed));
    }
    Ok(BenchReport {
        model: name,
        device: model.describe(),
        weight_bytes_per_token: bytes,
        bandwidth_gbps: bw,
        bandwidth_source: bw_source,
        seed_compared: seed,
        profiles: rows,
    })
}

/// Refuses, before any weight is loaded, a profile longer than the model's context, counted
/// as vLLM counts a request (prompt + generated ≤ `max_position_embeddings`). The runtimes
/// cap their KV cache there, so such a profile would otherwise fail only after its prefill,
/// which for 131 K tokens takes hours on the CPU.
fn check_context(profiles: &[Profile], cfg: &ModelConfig) -> Result<()> {
    let limit = cfg.max_position_embeddings;
    match profiles.iter().find(|p| p.prompt + p.generate > limit) {
        Some(p) => Err(Error::Unsupported(format!(
            "--profiles: {p} needs {} positions, more than the model's context of {limit} \
             (max_position_embeddings in its config.json)",
            p.prompt + p.generate
        ))),
        None => Ok(()),
    }
}

/// The model's display name, config, and checkpoint directory (`None` for --synthetic).
fn source(
    args: &BenchArgs,
    device: Device,
) -> Result<(String, ModelConfig, Option<std::path::PathBuf>)> {
    match (&args.model, &args.synthetic) {
        (Some(model), None) => {
            let opts = HubOptions {
                revision: args.revision.clone(),
                progress: true,
            };
            let dir = resolve_model(model, &opts)?;
            let cfg = ModelConfig::load(&dir)?;
            Ok((model.clone(), cfg, Some(dir)))
        }
        (None, Some(spec)) => Ok((
            format!(
                "synthetic {spec} (random {}{})",
                args.synthetic_scheme.preset(),
                if device != Device::Cuda && args.synthetic_scheme.weight_only() {
                    ", as BF16 on the CPU"
                } else {
                    ""
                }
            ),
            synth::synthetic_config(spec)?,
            None,
        )),
        _ => Err(Error::Unsupported(
            "qforge bench: give exactly one of --model and --synthetic".into(),
        )),
    }
}

fn cpu_model(
    cfg: ModelConfig,
    dir: Option<&Path>,
    args: &BenchArgs,
    max_seq: usize,
) -> Result<CpuBench> {
    let opts = CpuOptions {
        max_seq: Some(max_seq),
    };
    let model = match dir {
        Some(dir) => crate::runtime::cpu::load_cpu_with(dir, &opts)?,
        None => {
            let w: Weights = synth::random_cpu_weights(&cfg, args.synthetic_scheme, args.seed)?;
            CpuModel::new(cfg, w, &opts)?
        }
    };
    let bytes = synth::bytes_per_token(&model.weights);
    Ok(CpuBench { model, bytes })
}

type Loaded = (Box<dyn BenchModel>, f64, String);

#[cfg(feature = "cuda")]
fn cuda_model(
    cfg: &ModelConfig,
    dir: Option<&Path>,
    args: &BenchArgs,
    max_seq: usize,
) -> Result<Loaded> {
    let m = match dir {
        Some(dir) => cuda::load(dir, max_seq)?,
        None => cuda::synthetic(cfg, args.synthetic_scheme, args.seed, max_seq)?,
    };
    let (gpu, bw, how) = m.bandwidth()?;
    Ok((Box::new(m), bw, format!("{gpu}, {how}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_model(_: &ModelConfig, _: Option<&Path>, _: &BenchArgs, _: usize) -> Result<Loaded> {
    Err(Error::Unsupported(
        "this qforge was built without the CUDA backend (cargo feature `cuda`)".into(),
    ))
}
