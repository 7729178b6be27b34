//! What `verify` found, as JSON (serde) or a short aligned text report, and the gate.

use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

use super::metrics::Agreement;
use crate::runtime::generate::{Generation, StopReason};
use crate::runtime::sampler::SamplingParams;
use crate::{Error, Result};

/// The result of `qforge verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// `--model` as given, and the directory it resolved to.
    pub model: String,
    pub model_dir: PathBuf,
    /// The backend that ran, e.g. "cpu (8 threads)".
    pub device: String,
    /// The user message, and where the chat template came from (`None`: raw text).
    pub prompt: String,
    pub chat_template: Option<String>,
    pub prompt_tokens: usize,
    pub sampling: SamplingReport,
    pub generation: Generation,
    pub reference: Option<ReferenceReport>,
}

/// The reference model's run and the teacher-forced comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceReport {
    pub model: String,
    pub model_dir: PathBuf,
    /// The reference's own generation from the same prompt and settings.
    pub generation: Generation,
    /// Over the model's continuation (`generation.token_ids` of the report).
    pub agreement: Agreement,
    pub min_agreement: Option<f64>,
    pub passed: bool,
}

/// The sampling settings used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SamplingReport {
    pub greedy: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
}

impl From<&SamplingParams> for SamplingReport {
    fn from(p: &SamplingParams) -> Self {
        Self {
            greedy: p.is_greedy(),
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            seed: p.seed,
        }
    }
}

impl VerifyReport {
    /// `Err(Error::Verify)` when a reference was compared and the agreement is below the gate.
    pub fn gate(&self) -> Result<()> {
        match &self.reference {
            Some(r) if !r.passed => Err(Error::Verify(format!(
                "top-1 agreement {:.3} ({}/{}) < --min-agreement {:.3}",
                r.agreement.top1_agreement,
                r.agreement.top1_matches,
                r.agreement.tokens,
                r.min_agreement.unwrap_or(0.0)
            ))),
            _ => Ok(()),
        }
    }

    /// The short text report printed after the streamed generations.
    pub fn write_human(&self, w: &mut dyn Write) -> io::Result<()> {
        let s = &self.sampling;
        if s.greedy {
            writeln!(w, "sampling   greedy")?;
        } else {
            writeln!(
                w,
                "sampling   temperature {} top-p {} top-k {} seed {}",
                s.temperature, s.top_p, s.top_k, s.seed
            )?;
        }
        writeln!(w, "device     {}", self.device)?;
        writeln!(
            w,
            "{:<10} {:>7} {:>14} {:>7} {:>15} {:>14}",
            "", "prompt", "prefill tok/s", "new", "stop", "decode tok/s"
        )?;
        timing_row(w, "model", &self.generation)?;
        let Some(r) = &self.reference else {
            return Ok(());
        };
        timing_row(w, "reference", &r.generation)?;
        let a = &r.agreement;
        writeln!(w, "teacher-forced on the model's {} new tokens:", a.tokens)?;
        writeln!(
            w,
            "  top-1 agreement   {:.3} ({}/{})",
            a.top1_agreement, a.top1_matches, a.tokens
        )?;
        writeln!(
            w,
            "  KL(ref || model)  mean {}  max {}  nats/token",
            num(a.kl_mean, 6),
            num(a.kl_max, 6)
        )?;
        writeln!(
            w,
            "  perplexity        reference {}  model {}",
            num(a.perplexity_reference, 4),
            num(a.perplexity_model, 4)
        )?;
        if a.nonfinite_positions > 0 {
            writeln!(
                w,
                "  non-finite logits at {} of {} positions (counted as disagreeing)",
                a.nonfinite_positions, a.tokens
            )?;
        }
        if let Some(m) = r.min_agreement {
            let (op, verdict) = if r.passed {
                (">=", "pass")
            } else {
                ("<", "FAIL")
            };
            writeln!(
                w,
                "  gate              {:.3} {op} {m:.3}: {verdict}",
                a.top1_agreement
            )?;
        }
        Ok(())
    }
}

fn timing_row(w: &mut dyn Write, name: &str, g: &Generation) -> io::Result<()> {
    let stop = match g.stop {
        StopReason::Eos => "eos",
        StopReason::MaxNewTokens => "max-new-tokens",
    };
    writeln!(
        w,
        "{name:<10} {:>7} {:>14.1} {:>7} {:>15} {:>14.1}",
        g.prompt_tokens,
        g.prefill_tokens_per_s,
        g.token_ids.len(),
        stop,
        g.decode_tokens_per_s
    )
}

fn num(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(v) => format!("{v:.decimals$}"),
        None => "n/a".into(),
    }
}
