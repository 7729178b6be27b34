//! `qforge check`: would vLLM load this checkpoint, at which tensor-parallel sizes, on which
//! GPUs, with how much weight memory per GPU ([`serving`]). On a quantized checkpoint, or on
//! the plan of a quantization before anything is written (`--model`/`--shape` with a recipe).

use crate::checkpoint::hub::{self, HubOptions};
use crate::checkpoint::Checkpoint;
use crate::serving::{self, ServingModel, TpVerdict};
use crate::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// `qforge check` arguments.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "qforge check OUT [--tensor-parallel N,...] [--json]\n       \
    qforge check (--model <DIR|REPO_ID> | --shape NAME) (--scheme PRESET | --recipe FILE|NAME) \
    [--tensor-parallel N,...] [--json]",
    after_help = "Checks vLLM's rules for compressed-tensors checkpoints (vLLM 0.32): how each \
    Linear splits across tensor-parallel ranks (q/k/v/gate/up by output features, o/down by \
    input features, KV heads replicated when fewer than ranks), FP8 block and group sizes \
    against each part, int4 packing, and which GPU generations run each scheme. Exits 1 when \
    a requested size cannot load. docs/serving.md lists the rules and their sources.\n\n\
    Examples:\n  \
    qforge check out/smollm2-fp8-block\n  \
    qforge check out/llama-70b-fp8 --tensor-parallel 2 --json\n  \
    qforge check --model HuggingFaceTB/SmolLM2-135M-Instruct --scheme fp8_block --tensor-parallel 1\n  \
    qforge check --shape llama-70b --scheme fp8_dynamic          (a plan: nothing is written)"
)]
pub struct CheckArgs {
    /// A quantized checkpoint: the output of `qforge quantize` (or of llm-compressor).
    #[arg(
        value_name = "OUT",
        required_unless_present_any = ["model", "shape"],
        conflicts_with_all = ["model", "shape"]
    )]
    pub checkpoint: Option<PathBuf>,
    /// Check the plan of quantizing this source model instead (a directory or a Hub repo id);
    /// the output's shapes are computed, nothing is written. Needs --scheme or --recipe.
    #[arg(long, value_name = super::MODEL_VALUE, conflicts_with = "shape")]
    pub model: Option<String>,
    /// Hub revision with --model.
    #[arg(long, value_name = "REV", requires = "model")]
    pub revision: Option<String>,
    /// Check the plan for a model of this shape (as `make-model --shape`: tiny, llama-1b,
    /// llama-8b, llama-70b) without any weights. Needs --scheme or --recipe.
    #[arg(long, value_name = "NAME")]
    pub shape: Option<String>,
    /// With --model/--shape: the preset to plan (FP8_DYNAMIC, FP8_BLOCK, W8A8, W4A16, ...).
    #[arg(long, value_name = "PRESET", conflicts_with = "recipe")]
    pub scheme: Option<String>,
    /// With --model/--shape: the recipe to plan (a YAML file, or a recipe built into qforge).
    #[arg(long, value_name = "FILE|NAME")]
    pub recipe: Option<String>,
    /// With --scheme: the modules to leave unquantized (default lm_head, as `quantize`).
    #[arg(long, value_name = "NAME", num_args = 0.., requires = "scheme")]
    pub ignore: Option<Vec<String>>,
    /// Tensor-parallel sizes to check (comma-separated or repeated).
    #[arg(
        long,
        value_name = "N",
        num_args = 1..,
        value_delimiter = ',',
        default_values_t = [1, 2, 4, 8],
        value_parser = parse_tensor_parallel
    )]
    pub tensor_parallel: Vec<usize>,
    /// Memory of one GPU, for the room left to the KV cache at vLLM's default
    /// gpu_memory_utilization of 0.9 (80GiB: H100/A100-80GB; 141GB: H200; 48GB: L40S).
    #[arg(long, value_name = "SIZE", default_value = "80GiB", value_parser = super::parse_size)]
    pub gpu_memory: u64,
    /// Print the verdicts as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// vLLM's default `gpu_memory_utilization`.
const GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// A tensor-parallel size: a positive integer.
pub fn parse_tensor_parallel(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a tensor-parallel size: use a positive integer (1, 2, 4, 8)"
        )),
    }
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    source: String,
    vllm_version: &'static str,
    schemes: Vec<serving::SchemeGpus>,
    gpu_memory_bytes: u64,
    tensor_parallel: &'a [TpVerdict],
}

/// Runs `qforge check`.
pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let (source, model) = load(args)?;
    let verdicts = serving::check(&model, &args.tensor_parallel);
    if args.json {
        let report = JsonReport {
            source,
            vllm_version: serving::VLLM_VERSION,
            schemes: serving::scheme_gpus(&model),
            gpu_memory_bytes: args.gpu_memory,
            tensor_parallel: &verdicts,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Output(format!("cannot encode the report: {e}")))?;
        println!("{text}");
    } else {
        print_report(&source, &model, &verdicts, args.gpu_memory);
    }
    let refused: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.loadable)
        .map(|v| v.tensor_parallel.to_string())
        .collect();
    if refused.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Error::Serving(format!(
        "vLLM {} would not load it at tensor-parallel {}",
        serving::VLLM_VERSION,
        refused.join(", ")
    )))
}

/// The model to check, and how to name it in the report.
fn load(args: &CheckArgs) -> Result<(String, ServingModel)> {
    if let Some(dir) = &args.checkpoint {
        if args.scheme.is_some() || args.recipe.is_some() {
            return Err(Error::Serving(
                "--scheme and --recipe plan a quantization: use them with --model or --shape \
                 (OUT is already quantized)"
                    .into(),
            ));
        }
        if !dir.is_dir() {
            return Err(Error::Serving(format!(
                "{}: no such directory (qforge check OUT reads the output of qforge quantize)",
                dir.display()
            )));
        }
        return Ok((dir.display().to_string(), serving::from_checkpoint(dir)?));
    }
    if args.scheme.is_none() && args.recipe.is_none() {
        return Err(Error::Serving(
            "--model/--shape plan a quantization: add --scheme PRESET or --recipe FILE|NAME".into(),
        ));
    }
    let recipe = super::quantize::resolve_recipe(
        args.recipe.as_deref(),
        args.scheme.as_deref(),
        args.ignore.as_deref(),
    )?;
    let plan = recipe.load()?.plan()?;
    let what = args
        .scheme
        .as_deref()
        .or(args.recipe.as_deref())
        .unwrap_or("");
    if let Some(name) = &args.shape {
        let shape = serving::skeleton::named(name)?;
        let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        serving::skeleton::write(&shape, dir.path())?;
        let ck = Checkpoint::open(dir.path())?;
        let model = serving::from_source(&ck, &plan)?;
        return Ok((format!("plan: --shape {name} with {what}"), model));
    }
    let name = args.model.as_deref().unwrap_or_default();
    let opts = HubOptions {
        revision: args.revision.clone(),
        progress: !args.json,
    };
    let dir = hub::resolve_model(name, &opts)?;
    let ck = Checkpoint::open(&dir)?;
    let model = serving::from_source(&ck, &plan)?;
    Ok((format!("plan: {name} with {what}"), model))
}

fn gb(bytes: u64) -> String {
    match bytes {
        0..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

fn print_report(source: &str, model: &ServingModel, verdicts: &[TpVerdict], gpu_memory: u64) {
    println!("{source}: vLLM {} rules", serving::VLLM_VERSION);
    for s in serving::scheme_gpus(model) {
        let gpus: Vec<String> = s
            .gpus
            .iter()
            .map(|p| format!("{} {}", serving::rules::sm_range(p), p.kernel))
            .collect();
        println!("  {}: {}", s.scheme, gpus.join("; "));
    }
    if model.schemes.is_empty() {
        println!("  no quantized Linear layer");
    }
    let budget = gpu_memory as f64 * GPU_MEMORY_UTILIZATION;
    println!(
        "{:>4}  {:<6} {:>12}  {:>28}",
        "TP",
        "loads",
        "weights/GPU",
        format!(
            "left of 0.9 × {:.0} GiB",
            gpu_memory as f64 / (1u64 << 30) as f64
        )
    );
    for v in verdicts {
        let left = budget - v.weight_bytes_per_gpu as f64;
        let left = if left < 0.0 {
            format!("{} short", gb((-left) as u64))
        } else {
            gb(left as u64)
        };
        println!(
            "{:>4}  {:<6} {:>12}  {:>28}",
            v.tensor_parallel,
            if v.loadable { "yes" } else { "no" },
            gb(v.weight_bytes_per_gpu),
            left
        );
    }
    for v in verdicts {
        if let Some(f) = &v.failure {
            let more = match v.failed_layers {
                1 => String::new(),
                n => format!(" (and {} more layers)", n - 1),
            };
            println!("TP {}: {f}{more}", v.tensor_parallel);
        }
    }
}
