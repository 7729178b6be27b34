//! `qforge verify`: the command line of [`verify::run`].

use crate::checkpoint::hub::{self, HubOptions};
use crate::runtime::generate::SamplingArgs;
use crate::runtime::verify::{self, Output, VerifyOptions};
use crate::runtime::Device;
use crate::{Error, Result};
use std::process::ExitCode;

/// `qforge verify` command-line arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    qforge verify --model out/tiny-fp8 --prompt \"What is the capital of France?\"\n  \
    qforge verify --model out/tiny-fp8 --reference fixtures/tiny-random-llama --prompt \"Hello\" --max-new-tokens 16\n  \
    qforge verify --model RedHatAI/DeepSeek-R1-Distill-Llama-70B-FP8-dynamic --revision main \\\n    \
    --reference deepseek-ai/DeepSeek-R1-Distill-Llama-70B --prompt \"What is the capital of France?\"")]
pub struct VerifyArgs {
    /// The model to run: a local directory or a Hugging Face repo id (org/name).
    #[arg(long, value_name = super::MODEL_VALUE)]
    pub model: String,
    /// Hub revision (branch, tag or commit) when --model is a repo id.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// The user message; it is formatted with the model's chat template.
    #[arg(long)]
    pub prompt: String,
    /// A reference model (e.g. the BF16 source) to compare against: directory or repo id.
    #[arg(long, value_name = super::MODEL_VALUE)]
    pub reference: Option<String>,
    /// Hub revision (branch, tag or commit) when --reference is a repo id.
    #[arg(long, value_name = "REV", requires = "reference")]
    pub reference_revision: Option<String>,
    /// Stop after this many new tokens (fewer, with a note, where the prompt and the answer
    /// would not fit the model's max_position_embeddings).
    #[arg(long, default_value_t = super::DEFAULT_NEW_TOKENS, value_name = "N")]
    pub max_new_tokens: usize,
    /// Do not stop at EOS before this many new tokens (to compare a longer continuation).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub min_new_tokens: usize,
    /// Where to run the models.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print the report as JSON (and do not stream the generation).
    #[arg(long)]
    pub json: bool,
    /// With --reference: fail (exit code 2) when the top-1 agreement is below this.
    #[arg(
        long,
        default_value_t = 0.9,
        value_name = "FRACTION",
        allow_negative_numbers = true
    )]
    pub min_agreement: f64,
}

impl From<&VerifyArgs> for VerifyOptions {
    fn from(a: &VerifyArgs) -> Self {
        Self {
            model: a.model.clone(),
            reference: a.reference.clone(),
            prompt: a.prompt.clone(),
            max_new_tokens: a.max_new_tokens,
            min_new_tokens: a.min_new_tokens,
            device: a.device,
            sampling: a.sampling,
            min_agreement: Some(a.min_agreement),
            output: if a.json { Output::Json } else { Output::Human },
        }
    }
}

/// `qforge verify`: [`verify::run`] with the parsed arguments. A repo id with a revision is
/// fetched here (the library's verify fetches the default branch), after the numeric checks.
pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    let mut opts = VerifyOptions::from(args);
    verify::check(&opts)?;
    let progress = !args.json;
    if let Some(rev) = &args.revision {
        opts.model = fetch("--model", &args.model, rev, progress)?;
    }
    if let (Some(reference), Some(rev)) = (&args.reference, &args.reference_revision) {
        opts.reference = Some(fetch("--reference", reference, rev, progress)?);
    }
    verify::run(&opts)?;
    Ok(ExitCode::SUCCESS)
}

/// `model` at `revision`: a local directory as is, a repo id's snapshot in the HF cache.
fn fetch(flag: &str, model: &str, revision: &str, progress: bool) -> Result<String> {
    let opts = HubOptions {
        revision: Some(revision.to_string()),
        progress,
    };
    let dir = hub::resolve_model(model, &opts).map_err(|e| match e {
        // The hub module words its messages for --model.
        Error::Hub(msg) => Error::Hub(msg.replacen("--model", flag, 1)),
        other => other,
    })?;
    Ok(dir.to_string_lossy().into_owned())
}
