//! `qforge verify`: the command line of [`verify::run`].

use crate::runtime::generate::SamplingArgs;
use crate::runtime::verify::{self, Output, VerifyOptions};
use crate::runtime::Device;
use crate::Result;
use std::process::ExitCode;

/// `qforge verify` command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The model to run: a local directory or a Hugging Face repo id.
    #[arg(long)]
    pub model: String,
    /// The user message; it is formatted with the model's chat template.
    #[arg(long)]
    pub prompt: String,
    /// A reference model (e.g. the BF16 source) to compare against: directory or repo id.
    #[arg(long)]
    pub reference: Option<String>,
    /// Stop after this many new tokens (fewer, with a note, where the prompt and the answer
    /// would not fit the model's max_position_embeddings).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Do not stop at EOS before this many new tokens (to compare a longer continuation).
    #[arg(long, default_value_t = 0)]
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
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
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

/// `qforge verify`: [`verify::run`] with the parsed arguments.
pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    verify::run(&VerifyOptions::from(args))?;
    Ok(ExitCode::SUCCESS)
}
