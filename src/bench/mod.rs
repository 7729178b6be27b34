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
use crate::recipe::Scheme;
use crate::runtime::config::ModelConfig;
use crate::runtime::cpu::{CpuModel, CpuOptions};
use crate::runtime::weights::Weights;
use crate::runtime::Backend;
use crate::runtime::{resolve_device, Device};
use crate::{Error, Result};
use profile::{parse_profiles, Profile};
use report::{BenchReport, Row};
use std::path::Path;

/// What `qforge bench` runs: exactly one of `model` and `synthetic`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A model directory or Hub repo id, at `revision`.
    pub model: Option<String>,
    pub revision: Option<String>,
    /// A random model built in memory: a named shape or a config.json path, quantized with
    /// `synthetic_scheme` from the random weights of `seed`.
    pub synthetic: Option<String>,
    pub synthetic_scheme: Scheme,
    pub seed: u64,
    pub device: Device,
    /// `PROMPT/GENERATED` profiles, comma-separated, or `seed`.
    pub profiles: String,
}

/// Loads (or builds) the model, then times every profile.
pub fn run(args: &BenchOptions) -> Result<BenchReport> {
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
                Box::new(m) as Box<dyn Backend>,
                bw,
                "measured 256 MiB copy".to_string(),
            )
        }
    };
    let bytes = model.weight_bytes_per_token();
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
    args: &BenchOptions,
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
                args.synthetic_scheme.name(),
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
    args: &BenchOptions,
    max_seq: usize,
) -> Result<CpuModel> {
    let opts = CpuOptions {
        max_seq: Some(max_seq),
    };
    match dir {
        Some(dir) => crate::runtime::cpu::load_cpu_with(dir, &opts),
        None => {
            let w: Weights =
                crate::synthetic::weights::random_weights(&cfg, args.synthetic_scheme, args.seed)?;
            CpuModel::new(cfg, w, &opts)
        }
    }
}

type Loaded = (Box<dyn Backend>, f64, String);

#[cfg(feature = "cuda")]
fn cuda_model(
    cfg: &ModelConfig,
    dir: Option<&Path>,
    args: &BenchOptions,
    max_seq: usize,
) -> Result<Loaded> {
    let m = match dir {
        Some(dir) => cuda::load(dir, max_seq)?,
        None => cuda::synthetic(cfg, args.synthetic_scheme, args.seed, max_seq)?,
    };
    let (gpu, bw, how) = cuda::bandwidth(&m)?;
    Ok((Box::new(m), bw, format!("{gpu}, {how}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_model(_: &ModelConfig, _: Option<&Path>, _: &BenchOptions, _: usize) -> Result<Loaded> {
    Err(Error::Unsupported(
        "this qforge was built without the CUDA backend (cargo feature `cuda`)".into(),
    ))
}
