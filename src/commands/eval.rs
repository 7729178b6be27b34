//! `qforge eval`: lm_eval's openllm tasks on a model (and its reference), or perplexity.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::checkpoint::hub::{self, HubOptions};
use crate::eval::{self, EvalOptions};
use crate::runtime::Device;
use crate::{Error, Result};

/// `qforge eval` arguments.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    qforge eval --model out/r1-70b-fp8 --reference deepseek-ai/DeepSeek-R1-Distill-Llama-70B --data-dir ~/lm_eval_data\n  \
    qforge eval --model out/smollm2-fp8 --tasks hellaswag,arc_challenge --limit 50 --data-dir data --output results.json\n\n\
    Tasks follow lm-evaluation-harness 0.4.x (prompts, few-shot sampling with seed 1234, metrics,\n\
    stderr); `openllm` is the Open LLM Leaderboard v1 group the model cards report: arc_challenge\n\
    (25-shot), hellaswag (10), truthfulqa_mc2 (0), mmlu (5), winogrande (5), gsm8k (5).\n\
    Datasets: the Hub repos lm_eval reads (allenai/ai2_arc, Rowan/hellaswag, allenai/winogrande,\n\
    cais/mmlu, truthfulqa/truthful_qa, openai/gsm8k), downloaded into the Hugging Face cache\n\
    (HF_HOME, HF_ENDPOINT, HF_TOKEN; HF_HUB_OFFLINE=1 reads the cache only). Or --data-dir DIR\n\
    with DIR/<repo id>/<config>/<split>.jsonl, e.g. DIR/allenai/ai2_arc/ARC-Challenge/test.jsonl,\n\
    DIR/Rowan/hellaswag/default/validation.jsonl. See docs/eval.md.")]
pub struct EvalArgs {
    /// The model to evaluate: a directory or a Hub repo id.
    #[arg(long, value_name = super::MODEL_VALUE)]
    pub model: String,
    /// The unquantized model to compare with (recovery column); it must share the tokenizer.
    #[arg(long, value_name = super::MODEL_VALUE)]
    pub reference: Option<String>,
    /// Comma-separated tasks: openllm, arc_challenge, hellaswag, winogrande, mmlu,
    /// mmlu_<subject>, truthfulqa_mc2, gsm8k.
    #[arg(long, default_value = "openllm")]
    pub tasks: String,
    /// Few-shot examples per document for every task (default: each task's openllm count).
    #[arg(long, value_name = "N")]
    pub num_fewshot: Option<usize>,
    /// Evaluate only the first N documents of each task (lm_eval's --limit).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// Read the task datasets from this folder instead of the Hub (layout below).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Longest token window (lm_eval's max_length; default: the config's context length).
    #[arg(long, value_name = "TOKENS")]
    pub max_length: Option<usize>,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Keep every request's log-likelihood and every generation in the JSON.
    #[arg(long)]
    pub log_samples: bool,
    /// Instead of tasks: word/byte perplexity and bits per byte of this text file (lm_eval's
    /// wikitext rules), plus KL-divergence statistics against --reference.
    #[arg(long, value_name = "FILE")]
    pub perplexity: Option<PathBuf>,
    /// Rolling-window length in tokens for --perplexity.
    #[arg(
        long,
        value_name = "TOKENS",
        default_value_t = 2048,
        requires = "perplexity"
    )]
    pub context: usize,
}

pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    let fetch = |flag: &str, m: &str| -> Result<PathBuf> {
        let opts = HubOptions {
            revision: None,
            progress: true,
        };
        hub::resolve_model(m, &opts).map_err(|e| match e {
            Error::Hub(msg) => Error::Hub(msg.replacen("--model", flag, 1)),
            other => other,
        })
    };
    let opts = EvalOptions {
        model: fetch("--model", &args.model)?,
        reference: args
            .reference
            .as_deref()
            .map(|r| fetch("--reference", r))
            .transpose()?,
        tasks: args.tasks.clone(),
        num_fewshot: args.num_fewshot,
        limit: args.limit,
        device: args.device,
        data_dir: args.data_dir.clone(),
        hub: hub::HubConfig::from_env(),
        max_length: args.max_length,
        log_samples: args.log_samples,
        progress: true,
    };
    if let Some(file) = &args.perplexity {
        let report = eval::perplexity::perplexity(
            &opts.model,
            opts.reference.as_deref(),
            file,
            args.context,
            args.device,
        )?;
        let json = to_json(&report)?;
        if let Some(path) = &args.output {
            write_atomically(path, &json)?;
        }
        match args.json {
            true => println!("{json}"),
            false => print!("{}", eval::report::perplexity_table(&report)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = eval::evaluate(&opts)?;
    let json = to_json(&report)?;
    if let Some(path) = &args.output {
        write_atomically(path, &json)?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", eval::report::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map_err(|e| Error::Eval(format!("cannot write the results as JSON: {e}")))
}

/// Writes `text` to a temporary sibling, then renames it into place.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
