//! Picking the next token from logits: greedy (argmax, what `verify` uses) or seeded sampling
//! with temperature → top-k → top-p, in that order, as transformers' `generate` applies its
//! logits warpers.

use std::cmp::Ordering;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::runtime::tokenizer::read_json_opt;
use crate::{Error, Result};

/// Sampling settings. `temperature <= 0` (or `top_k == 1`) means greedy; `top_k == 0` and
/// `top_p >= 1` switch those filters off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy.
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding (argmax).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }

    /// Whether these settings reduce to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0 || self.top_k == 1
    }

    /// Sampling settings from the model's `generation_config.json` (`temperature`, `top_p`,
    /// `top_k`), with transformers' defaults (1.0, 1.0, 50) for what it does not set or when
    /// the file is absent. Seed 0; the caller overrides what the user gave.
    pub fn from_generation_config(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("generation_config.json");
        let json = read_json_opt(&path)?;
        let get = |key: &str| {
            json.as_ref()
                .and_then(|j| j.get(key))
                .filter(|v| !v.is_null())
        };
        let num = |key: &str, default: f64| -> Result<f64> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    Error::Runtime(format!(
                        "{}: \"{key}\" must be a number, got {v}",
                        path.display()
                    ))
                }),
            }
        };
        let top_k = match get("top_k") {
            None => 50,
            Some(v) => v.as_u64().map(|k| k as usize).ok_or_else(|| {
                Error::Runtime(format!(
                    "{}: \"top_k\" must be a non-negative integer, got {v}",
                    path.display()
                ))
            })?,
        };
        let p = Self {
            temperature: num("temperature", 1.0)? as f32,
            top_p: num("top_p", 1.0)? as f32,
            top_k,
            seed: 0,
        };
        p.validate()
            .map_err(|e| Error::Runtime(format!("{}: {e}", path.display())))?;
        Ok(p)
    }

    /// Checks the ranges: temperature finite and ≥ 0, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Runtime(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(Error::Runtime(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// A seeded sampler. Its buffers are allocated once, for the vocabulary size given to [`new`].
///
/// With top-k on, sampling needs only the `k` best logits: [`Sampler::sample`] selects them
/// from a whole row, and [`Sampler::sample_top`] takes them ready-made (from a GPU's
/// `top_k_rows`), with the same result.
///
/// [`new`]: Sampler::new
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Candidates as (weight, token id): a logit until converted, then exp((x - max) / T).
    cand: Vec<(f32, u32)>,
    /// The best logits, for top-k.
    top: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler for logits of `vocab` entries, seeded with `p.seed`.
    pub fn new(p: SamplingParams, vocab: usize) -> Self {
        Self {
            params: p,
            rng: StdRng::seed_from_u64(p.seed),
            cand: Vec::with_capacity(vocab),
            top: Vec::with_capacity(if p.top_k < vocab { vocab } else { 0 }),
        }
    }

    /// The settings in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// How many of the best logits of a row of `vocab` decide the next token, when a few do:
    /// 1 for greedy, `top_k` with top-k on; `None` when every logit counts.
    pub fn candidates_needed(&self, vocab: usize) -> Option<usize> {
        let p = self.params;
        if p.is_greedy() {
            Some(1)
        } else {
            (p.top_k > 0 && p.top_k < vocab).then_some(p.top_k)
        }
    }

    /// Picks the next token id from one row of logits. NaN logits count as -inf.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.is_greedy() || logits.len() < 2 {
            return argmax(logits);
        }
        if let Some(k) = self.candidates_needed(logits.len()) {
            let mut top = std::mem::take(&mut self.top);
            top_candidates(logits, k, &mut top);
            let id = self.sample_top(&top);
            self.top = top;
            return id;
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &x)| (weight(x, max, inv_t), i as u32)),
        );
        let mut total: f64 = self.cand.iter().map(|c| f64::from(c.0)).sum();
        if p.top_p < 1.0 {
            // Tokens lighter than (1 - top_p) / n together weigh less than 1 - top_p and are
            // the lightest ones, so all of them are cut: drop them before sorting. (The 0.999
            // keeps rounding from dropping a token that sits right at the bound.)
            let removable = f64::from(1.0 - p.top_p) * total;
            let bound = (0.999 * removable / self.cand.len() as f64) as f32;
            self.cand.retain(|c| c.0 >= bound);
            self.cand.sort_unstable_by(best_first);
            total = self.nucleus(p.top_p, total);
        }
        self.draw(total)
    }

    /// Picks the next token id given only the best logits of the row, best first, as
    /// [`top_candidates`] orders them: `candidates_needed` of them (or more: only that many
    /// are used). Equal to [`Sampler::sample`] on the whole row.
    pub fn sample_top(&mut self, top: &[(f32, u32)]) -> u32 {
        let Some(&(max, best)) = top.first() else {
            return 0;
        };
        let p = self.params;
        let k = self.candidates_needed(usize::MAX).unwrap_or(top.len());
        let top = &top[..k.min(top.len())];
        if p.is_greedy() || top.len() < 2 || max.is_nan() || max == f32::NEG_INFINITY {
            // As `argmax` of the row: NaN ranks last, so a NaN best means all are NaN.
            return if max.is_nan() { 0 } else { best };
        }
        let inv_t = 1.0 / p.temperature;
        self.cand.clear();
        self.cand
            .extend(top.iter().map(|&(x, id)| (weight(x, max, inv_t), id)));
        let mut total: f64 = self.cand.iter().map(|c| f64::from(c.0)).sum();
        if p.top_p < 1.0 {
            total = self.nucleus(p.top_p, total);
        }
        self.draw(total)
    }

    /// Keeps, best first, the tokens whose preceding probability mass is < `top_p` (always
    /// the best one): transformers removes the tokens whose ascending cumulative mass is
    /// <= 1 - top_p. The candidates must be sorted heaviest first. Returns the kept weight.
    fn nucleus(&mut self, top_p: f32, total: f64) -> f64 {
        let limit = f64::from(top_p) * total;
        let mut before = 0.0f64;
        let mut keep = self.cand.len();
        for (i, c) in self.cand.iter().enumerate() {
            if i > 0 && before >= limit {
                keep = i;
                break;
            }
            before += f64::from(c.0);
        }
        self.cand.truncate(keep);
        self.cand.iter().map(|c| f64::from(c.0)).sum()
    }

    /// Draws a candidate with probability proportional to its weight (`total` their sum).
    fn draw(&mut self, total: f64) -> u32 {
        let r = self.rng.random::<f64>() * total;
        let mut cum = 0.0f64;
        for &(q, id) in &self.cand {
            cum += f64::from(q);
            if r < cum {
                return id;
            }
        }
        // Rounding left r at the very top: take the last candidate with mass.
        self.cand
            .iter()
            .rev()
            .find(|c| c.0 > 0.0)
            .map_or(self.cand[0].1, |c| c.1)
    }
}

/// exp((x - max) / T); 0 for NaN.
fn weight(x: f32, max: f32, inv_t: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        ((x - max) * inv_t).exp()
    }
}

/// Sets `out` to the `k` largest logits with their ids, best first; ties (-0 and +0 too) go
/// to the lower id and NaN ranks below -inf, so the first is [`argmax`]'s pick. The GPU's
/// `top_k_rows` selects in this very order.
pub fn top_candidates(logits: &[f32], k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    out.extend(logits.iter().enumerate().map(|(i, &x)| (x, i as u32)));
    let k = k.min(out.len());
    if k == 0 {
        return;
    }
    if k < out.len() {
        out.select_nth_unstable_by(k - 1, logit_first);
        out.truncate(k);
    }
    out.sort_unstable_by(logit_first);
}

/// Larger logit first, NaN last; ties go to the lower id.
fn logit_first(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    logit_key(b.0).cmp(&logit_key(a.0)).then(a.1.cmp(&b.1))
}

/// The GPU's order key of a logit: the float's bits made to sort as unsigned integers, with
/// -0 as +0 (they tie, as in [`argmax`]) and NaN at 0, below -inf.
fn logit_key(x: f32) -> u32 {
    let b = if x == 0.0 { 0 } else { x.to_bits() };
    if x.is_nan() {
        0
    } else if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Heaviest first; ties go to the lower id, so the order is deterministic.
fn best_first(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Index of the largest logit; the first one wins ties; NaN never wins (all NaN → 0).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_val = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if !found || x > best_val {
            best = i;
            best_val = x;
            found = true;
        }
    }
    best as u32
}
