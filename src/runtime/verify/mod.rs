//! `qforge verify`: run a (quantized) model on a chat prompt, stream its answer and time it;
//! with a reference model (the BF16 source), also run the reference, teacher-force both on the
//! model's continuation and report top-1 agreement, KL(reference ‖ model) and perplexities,
//! failing with [`Error::Verify`] when the agreement is below the gate.
//!
//! Models are loaded one at a time (the model, then the reference), so peak memory is one
//! model plus the model's continuation logits (`[new tokens, vocab]` f32); the prompt runs in
//! pieces without logits, and the reference's rows are compared a block at a time.

mod metrics;
mod report;

pub use metrics::{compare, Agreement, Sums};
pub use report::{ReferenceReport, SamplingReport, VerifyReport};

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::hub::{resolve_model, HubOptions};
use crate::runtime::chat::{user_prompt, ChatTemplate};
use crate::runtime::config::ModelConfig;
use crate::runtime::generate::{generate, prefill, GenerateOptions, Generation, SamplingArgs};
use crate::runtime::tokenizer::TextTokenizer;
use crate::runtime::{load, resolve_device, Backend, Device};
use crate::{Error, Result};

/// How `verify` talks to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Stream the generations to stdout, then print a short report.
    #[default]
    Human,
    /// Print the report as JSON on stdout, nothing else (notices go to stderr).
    Json,
    /// Print nothing.
    Silent,
}

/// Everything `verify` needs; [`VerifyOptions::new`] gives the command-line defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyOptions {
    /// Directory or hub repo id of the model to run.
    pub model: String,
    /// Directory or hub repo id of the reference model, if any.
    pub reference: Option<String>,
    /// The user message.
    pub prompt: String,
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub device: Device,
    pub sampling: SamplingArgs,
    /// The agreement gate (with a reference); `None` reports without gating.
    pub min_agreement: Option<f64>,
    pub output: Output,
}

impl VerifyOptions {
    /// The command-line defaults: 128 new tokens, greedy, device auto, gate 0.9, human output.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            reference: None,
            prompt: prompt.into(),
            max_new_tokens: 128,
            min_new_tokens: 0,
            device: Device::Auto,
            sampling: SamplingArgs::default(),
            min_agreement: Some(0.9),
            output: Output::Human,
        }
    }
}

/// [`verify`], then the report (human or JSON, per `opts.output`), then the gate: an
/// [`Error::Verify`] when the agreement is below `opts.min_agreement`.
pub fn run(opts: &VerifyOptions) -> Result<VerifyReport> {
    let report = verify(opts)?;
    let mut out = std::io::stdout().lock();
    let written = match opts.output {
        Output::Human => report.write_human(&mut out),
        Output::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out)),
        Output::Silent => Ok(()),
    };
    written.map_err(|e| Error::Output(format!("cannot write the verify report: {e}")))?;
    report.gate()?;
    Ok(report)
}

/// Runs the model (and the reference, when given) and measures; never gates (see
/// [`VerifyReport::gate`]). With [`Output::Human`] the generations stream to stdout.
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport> {
    check(opts)?;
    let loud = opts.output != Output::Silent;
    let human = opts.output == Output::Human;
    let model_dir = resolve("--model", &opts.model, loud)?;
    let prompt = Prompt::load(&model_dir, &opts.prompt)?;
    let reference = match &opts.reference {
        Some(r) => {
            let dir = resolve("--reference", r, loud)?;
            let p = Prompt::load(&dir, &opts.prompt)?;
            if p.ids != prompt.ids {
                return Err(Error::Runtime(format!(
                    "--reference {r}: its tokenizer and chat template give other prompt token ids \
                     than --model's ({} vs {} tokens); verify compares models that share a tokenizer",
                    p.ids.len(),
                    prompt.ids.len()
                )));
            }
            Some((r.as_str(), dir, p))
        }
        None => None,
    };
    let sampling = opts.sampling.resolve(&model_dir)?;
    let dirs = std::iter::once(&model_dir).chain(reference.as_ref().map(|r| &r.1));
    let max_new = fit_context(opts.max_new_tokens, prompt.ids.len(), dirs, loud)?;
    let gen = GenerateOptions {
        max_new_tokens: max_new,
        min_new_tokens: opts.min_new_tokens.min(max_new),
        sampling,
    };
    let device = resolve_device(opts.device)?;
    let max_seq = Some(prompt.ids.len() + max_new);

    let mut model = load(&model_dir, device, max_seq)?;
    let device_name = model.describe();
    if loud {
        eprintln!(
            "qforge verify: device {device_name} (--device {})",
            device_label(opts.device)
        );
    }
    if human {
        println!("model      {}", model_dir.display());
        println!(
            "prompt     {} tokens ({})",
            prompt.ids.len(),
            prompt.template_label()
        );
        println!();
    }
    let generation = run_one(model.as_mut(), &prompt, &gen, human)?;

    let reference = match reference {
        None => None,
        Some((name, dir, rp)) => {
            let vocab = model.vocab_size();
            let mut rows = Vec::with_capacity(generation.token_ids.len() * vocab);
            teacher_forced(
                model.as_mut(),
                &prompt.ids,
                &generation.token_ids,
                |_, r| {
                    rows.extend_from_slice(r);
                    Ok(())
                },
            )?;
            drop(model);
            let mut rm = load(&dir, device, max_seq)?;
            if rm.vocab_size() != vocab {
                return Err(Error::Runtime(format!(
                    "--reference {name}: vocabulary of {} tokens, but --model has {vocab}",
                    rm.vocab_size()
                )));
            }
            if human {
                println!("reference  {}", dir.display());
                println!();
            }
            let ref_gen = run_one(rm.as_mut(), &rp, &gen, human)?;
            let targets = &generation.token_ids;
            let mut sums = Sums::default();
            teacher_forced(rm.as_mut(), &prompt.ids, targets, |first, r| {
                let (n, model_rows) = (r.len() / vocab, &rows[first * vocab..]);
                let t = &targets[first..first + n];
                sums.add(r, &model_rows[..r.len()], vocab, t)
            })?;
            let agreement = sums.agreement();
            let passed = opts
                .min_agreement
                .is_none_or(|m| agreement.top1_agreement >= m);
            Some(ReferenceReport {
                model: name.to_string(),
                model_dir: dir,
                generation: ref_gen,
                agreement,
                min_agreement: opts.min_agreement,
                passed,
            })
        }
    };
    Ok(VerifyReport {
        model: opts.model.clone(),
        model_dir,
        device: device_name,
        prompt: opts.prompt.clone(),
        chat_template: prompt.template.clone(),
        prompt_tokens: prompt.ids.len(),
        sampling: SamplingReport::from(&sampling),
        generation,
        reference,
    })
}

/// `--max-new-tokens` within the context of every model in `dirs` (the least
/// `max_position_embeddings`), counted as vLLM counts a request: prompt + new tokens. A prompt
/// that leaves no room is an error; a longer generation is capped, saying so when `loud`.
/// Both are found before any weight is loaded.
fn fit_context<'a>(
    max_new: usize,
    prompt: usize,
    dirs: impl Iterator<Item = &'a PathBuf>,
    loud: bool,
) -> Result<usize> {
    let mut context = usize::MAX;
    for dir in dirs {
        context = context.min(ModelConfig::load(dir)?.max_position_embeddings);
    }
    if prompt >= context {
        return Err(Error::Runtime(format!(
            "--prompt: {prompt} tokens (with the chat template) leave no room for an answer in \
             the model's context of {context} positions (max_position_embeddings)"
        )));
    }
    let room = context - prompt;
    if max_new <= room {
        return Ok(max_new);
    }
    if loud {
        eprintln!(
            "qforge verify: --max-new-tokens {max_new} capped at {room}: the prompt's {prompt} \
             tokens and the answer must fit the model's context of {context} positions"
        );
    }
    Ok(room)
}

/// Validates the numeric options before anything is loaded.
pub fn check(opts: &VerifyOptions) -> Result<()> {
    if opts.max_new_tokens == 0 {
        return Err(Error::Runtime("--max-new-tokens must be at least 1".into()));
    }
    if let Some(m) = opts.min_agreement {
        if !(0.0..=1.0).contains(&m) {
            return Err(Error::Runtime(format!(
                "--min-agreement must be between 0 and 1, got {m}"
            )));
        }
    }
    Ok(())
}

fn device_label(d: Device) -> &'static str {
    match d {
        Device::Auto => "auto",
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    }
}

/// A local directory as is, or a hub repo id downloaded into the HF cache.
fn resolve(flag: &str, model: &str, progress: bool) -> Result<PathBuf> {
    let opts = HubOptions {
        revision: None,
        progress,
    };
    resolve_model(model, &opts).map_err(|e| match e {
        // The hub module words its messages for --model.
        Error::Hub(msg) => Error::Hub(msg.replacen("--model", flag, 1)),
        other => other,
    })
}

/// Generates, streaming to stdout when `stream`.
fn run_one(
    model: &mut dyn Backend,
    prompt: &Prompt,
    gen: &GenerateOptions,
    stream: bool,
) -> Result<Generation> {
    let mut stdout = std::io::stdout();
    let out: Option<&mut (dyn Write + Send)> = if stream { Some(&mut stdout) } else { None };
    let g = generate(model, &prompt.tok, &prompt.ids, gen, out)?;
    if stream {
        println!();
    }
    Ok(g)
}

/// Rows of logits one teacher-forced forward pass returns at most: with [`prefill`] for the
/// prompt, verify's memory is bounded by this block (and the model's continuation rows), not
/// by the prompt's length × vocab.
const TEACHER_ROWS: usize = 64;

/// Runs `prompt` + `continuation` (all but its last token) and hands `each` the logits that
/// predict the continuation tokens, a block at a time: `each(first, rows)` gets the
/// `[rows.len() / vocab, vocab]` rows predicting `continuation[first..]`. The prompt but its
/// last token goes through [`prefill`] (no logits kept).
fn teacher_forced(
    model: &mut dyn Backend,
    prompt: &[u32],
    continuation: &[u32],
    mut each: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let (p, n) = (prompt.len(), continuation.len());
    if p == 0 || n == 0 {
        return Err(Error::Runtime("verify: nothing to teacher-force".into()));
    }
    model.reset();
    prefill(model, &prompt[..p - 1], 0)?;
    let mut seq = Vec::with_capacity(n);
    seq.push(prompt[p - 1]);
    seq.extend_from_slice(&continuation[..n - 1]);
    for (i, block) in seq.chunks(TEACHER_ROWS).enumerate() {
        let first = i * TEACHER_ROWS;
        let rows = model.forward_view(block, p - 1 + first, true)?;
        each(first, rows)?;
    }
    Ok(())
}

/// A model's tokenizer and the user message rendered and encoded for it.
struct Prompt {
    tok: TextTokenizer,
    /// Where the chat template came from; `None` when the model has none (raw text).
    template: Option<String>,
    ids: Vec<u32>,
}

impl Prompt {
    fn load(dir: &Path, message: &str) -> Result<Self> {
        let tok = TextTokenizer::load(dir)?;
        let template = ChatTemplate::load(dir)?;
        let text = user_prompt(template.as_ref(), message)?;
        // A rendered template holds its own special tokens; raw text gets the tokenizer's.
        let ids = tok.encode(&text, template.is_none())?;
        Ok(Self {
            tok,
            template: template.map(|t| t.origin().to_string()),
            ids,
        })
    }

    fn template_label(&self) -> String {
        match &self.template {
            Some(t) => format!("chat template {t}"),
            None => "no chat template: raw text".into(),
        }
    }
}
