//! Text generation on a loaded model: device choice and loading ([`load`]), sampling settings
//! from the command line ([`SamplingArgs`]), and the prefill + decode loop with streamed
//! output and timings ([`generate`]).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::runtime::sampler::{Sampler, SamplingParams};
use crate::runtime::tokenizer::{DecodeStream, TextTokenizer};
use crate::runtime::Backend;
use crate::{Error, Result};

/// Sampling flags as the user gave them. Greedy unless sampling is asked for: a temperature
/// above 0, or (no temperature given) any of top-p / top-k / seed. Then what the user did not
/// give comes from the model's `generation_config.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, clap::Args)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (the default).
    // Negative numbers are taken as values so that `--temperature -1` gets the range error,
    // not clap's "unexpected argument '-1'".
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Random seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// Whether these flags ask for sampling rather than greedy decoding.
    pub fn wants_sampling(&self) -> bool {
        match self.temperature {
            Some(t) => t.is_nan() || t > 0.0,
            None => self.top_p.is_some() || self.top_k.is_some() || self.seed.is_some(),
        }
    }

    /// The settings to generate with, for the model in `model_dir`.
    pub fn resolve(&self, model_dir: &Path) -> Result<SamplingParams> {
        if !self.wants_sampling() {
            if let Some(t) = self.temperature {
                SamplingParams {
                    temperature: t,
                    ..SamplingParams::greedy()
                }
                .validate()?;
            }
            return Ok(SamplingParams::greedy());
        }
        let mut p = SamplingParams::from_generation_config(model_dir)?;
        p.temperature = self.temperature.unwrap_or(p.temperature);
        p.top_p = self.top_p.unwrap_or(p.top_p);
        p.top_k = self.top_k.unwrap_or(p.top_k);
        p.seed = self.seed.unwrap_or(p.seed);
        p.validate()?;
        Ok(p)
    }
}

/// Generation limits and sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// Generation stops after this many new tokens (at least 1).
    pub max_new_tokens: usize,
    /// EOS cannot be chosen before this many new tokens (transformers' `min_new_tokens`).
    pub min_new_tokens: usize,
    pub sampling: SamplingParams,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxNewTokens,
}

/// One generation and its timings.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The new text, without the final EOS token (other special tokens are kept).
    pub text: String,
    /// Every new token id, including the EOS that stopped generation.
    pub token_ids: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Time to run the prompt and pick the first new token.
    pub prefill_s: f64,
    pub prefill_tokens_per_s: f64,
    /// Single-token forward passes after the prefill, and their time (sampling included).
    pub decode_tokens: usize,
    pub decode_s: f64,
    pub decode_tokens_per_s: f64,
}

/// The most tokens one forward pass of a prefill takes: a longer prompt runs in pieces of
/// this size, so its activations (and logits) take memory bounded by a piece, not by the
/// prompt's length.
pub const PREFILL_CHUNK: usize = 512;

/// Runs `tokens` at positions `pos..` into the KV cache, [`PREFILL_CHUNK`] at a time, without
/// keeping any logits.
pub fn prefill(model: &mut dyn Backend, tokens: &[u32], pos: usize) -> Result<()> {
    for (i, piece) in tokens.chunks(PREFILL_CHUNK).enumerate() {
        model.forward_view(piece, pos + i * PREFILL_CHUNK, false)?;
    }
    Ok(())
}

/// Prefills `prompt`, then decodes token by token with the KV cache until an EOS id or
/// `max_new_tokens`, writing the text to `out` as it is produced when given. The loop
/// itself allocates nothing per token (a streamed token's text aside).
///
/// The loop runs on a rayon worker thread: the backend's parallel matmuls then start on the
/// caller's own deque, instead of being injected into the pool from outside (which wakes
/// threads and allocates queue blocks every few dozen calls).
pub fn generate(
    model: &mut dyn Backend,
    tok: &TextTokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    out: Option<&mut (dyn Write + Send)>,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(Error::Runtime("the prompt encodes to no tokens".into()));
    }
    if opts.max_new_tokens == 0 {
        return Err(Error::Runtime("--max-new-tokens must be at least 1".into()));
    }
    rayon::scope(|_| decode(model, tok, prompt, opts, out))
}

/// The loop of [`generate`].
fn decode(
    model: &mut dyn Backend,
    tok: &TextTokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut out: Option<&mut (dyn Write + Send)>,
) -> Result<Generation> {
    let vocab = model.vocab_size();
    let eos = tok.eos_ids();
    let mut pick = Picker {
        sampler: Sampler::new(opts.sampling, vocab),
        masked: vec![0.0; if opts.min_new_tokens > 0 { vocab } else { 0 }],
        kept: Vec::with_capacity(if opts.min_new_tokens > 0 { 1024 } else { 0 }),
        eos,
        min_new: opts.min_new_tokens,
    };
    let mut stream = out.is_some().then(|| tok.stream());
    let mut ids = Vec::with_capacity(opts.max_new_tokens);
    model.reset();

    let start = Instant::now();
    // All but the last piece of a long prompt first; the last piece gives the first token.
    let last = (prompt.len() - 1) / PREFILL_CHUNK * PREFILL_CHUNK;
    prefill(model, &prompt[..last], 0)?;
    let mut id = pick.step(model, &prompt[last..], last, 0)?;
    let mut prefill_s = None;
    let stop = loop {
        prefill_s.get_or_insert_with(|| start.elapsed().as_secs_f64());
        ids.push(id);
        if tok.is_eos(id) {
            break StopReason::Eos;
        }
        if let (Some(s), Some(w)) = (stream.as_mut(), out.as_deref_mut()) {
            emit(s, w, id)?;
        }
        if ids.len() == opts.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        id = pick.step(model, &[id], prompt.len() + ids.len() - 1, ids.len())?;
    };
    let total_s = start.elapsed().as_secs_f64();
    if let Some(w) = out {
        writeln!(w).and_then(|_| w.flush()).map_err(stdout_error)?;
    }

    let kept = if stop == StopReason::Eos {
        ids.len() - 1
    } else {
        ids.len()
    };
    let prefill_s = prefill_s.unwrap_or(total_s);
    let decode_s = total_s - prefill_s;
    let decode_tokens = ids.len() - 1;
    Ok(Generation {
        text: tok.decode(&ids[..kept])?,
        stop,
        prompt_tokens: prompt.len(),
        prefill_s,
        prefill_tokens_per_s: rate(prompt.len(), prefill_s),
        decode_tokens,
        decode_s,
        decode_tokens_per_s: rate(decode_tokens, decode_s),
        token_ids: ids,
    })
}

/// Tokens per second, 0 when nothing was timed.
fn rate(tokens: usize, secs: f64) -> f64 {
    if tokens == 0 || secs <= 0.0 {
        0.0
    } else {
        tokens as f64 / secs
    }
}

/// Chooses the next token: the sampler, with EOS masked out while fewer than `min_new`
/// tokens exist (on a copy into the preallocated `masked`, so the model's buffer stays as is).
struct Picker<'a> {
    sampler: Sampler,
    masked: Vec<f32>,
    /// The candidates left once EOS ids are taken out.
    kept: Vec<(f32, u32)>,
    eos: &'a [u32],
    min_new: usize,
}

impl Picker<'_> {
    /// Runs `tokens` at `pos` and picks the token after them, `generated` tokens into the
    /// answer. When the sampler needs only the best few logits (greedy, top-k) and the
    /// engine selects them itself, only those come back from it.
    fn step(
        &mut self,
        model: &mut dyn Backend,
        tokens: &[u32],
        pos: usize,
        generated: usize,
    ) -> Result<u32> {
        match self.candidates_needed(model.vocab_size(), generated) {
            Some(k) if k <= model.top_capacity() => {
                let top = model.forward_top(tokens, pos, k)?;
                Ok(self.next_from_top(top, generated))
            }
            _ => {
                let logits = model.forward_view(tokens, pos, false)?;
                Ok(self.next(logits, generated))
            }
        }
    }

    /// How many of the best logits decide the next token, when a few do: the sampler's
    /// number, plus the EOS ids while they are masked (they may be among the best).
    fn candidates_needed(&self, vocab: usize, generated: usize) -> Option<usize> {
        let k = self.sampler.candidates_needed(vocab)?;
        let k = if generated < self.min_new {
            k + self.eos.len()
        } else {
            k
        };
        (k <= vocab).then_some(k)
    }

    fn next(&mut self, logits: &[f32], generated: usize) -> u32 {
        if generated >= self.min_new || self.masked.len() != logits.len() {
            return self.sampler.sample(logits);
        }
        self.masked.copy_from_slice(logits);
        for &e in self.eos {
            if let Some(x) = self.masked.get_mut(e as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
        self.sampler.sample(&self.masked)
    }

    /// [`Picker::next`] from the best logits only. With EOS masked, the EOS ids are dropped
    /// from them instead of set to -inf: the same pick unless fewer than the sampler's `k`
    /// other logits are finite.
    fn next_from_top(&mut self, top: &[(f32, u32)], generated: usize) -> u32 {
        if generated >= self.min_new {
            return self.sampler.sample_top(top);
        }
        self.kept.clear();
        let eos = self.eos;
        self.kept
            .extend(top.iter().filter(|c| !eos.contains(&c.1)).copied());
        self.sampler.sample_top(&self.kept)
    }
}

/// Writes the text `id` completes, if any, and flushes so it shows at once.
fn emit(stream: &mut DecodeStream<'_>, out: &mut dyn Write, id: u32) -> Result<()> {
    if let Some(piece) = stream.step(id)? {
        out.write_all(piece.as_bytes())
            .and_then(|_| out.flush())
            .map_err(stdout_error)?;
    }
    Ok(())
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::Output(format!("cannot write the generated text: {e}"))
}
