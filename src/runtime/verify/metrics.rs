//! Teacher-forced comparison of two models' logits over the same tokens: top-1 agreement,
//! KL(reference ‖ model) per token and the perplexity of each, all from log-softmax in f64.

use serde::Serialize;

use crate::runtime::sampler::argmax;
use crate::{Error, Result};

/// How closely the model follows the reference over a continuation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Continuation tokens compared.
    pub tokens: usize,
    /// Positions where both models' most likely next token is the same.
    pub top1_matches: usize,
    /// `top1_matches / tokens`.
    pub top1_agreement: f64,
    /// Mean and max of KL(reference ‖ model) per position, in nats; `None` when no position
    /// has finite logits in both models.
    pub kl_mean: Option<f64>,
    pub kl_max: Option<f64>,
    /// exp(mean negative log-likelihood of the continuation tokens), for each model.
    pub perplexity_reference: Option<f64>,
    pub perplexity_model: Option<f64>,
    /// Positions where either model's logits hold NaN or +inf: they count as disagreeing and
    /// are left out of KL and perplexity.
    pub nonfinite_positions: usize,
}

/// Log-softmax summary of one logits row: its max and log-sum-exp, in f64.
#[derive(Debug, Clone, Copy)]
struct Row<'a> {
    logits: &'a [f32],
    lse: f64,
}

impl<'a> Row<'a> {
    /// `None` when the row holds NaN or +inf, or is all -inf.
    fn new(logits: &'a [f32]) -> Option<Self> {
        if logits.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
            return None;
        }
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
        if max == f64::NEG_INFINITY {
            return None;
        }
        let sum: f64 = logits.iter().map(|&x| (f64::from(x) - max).exp()).sum();
        Some(Row {
            logits,
            lse: max + sum.ln(),
        })
    }

    fn logp(&self, id: usize) -> f64 {
        f64::from(self.logits[id]) - self.lse
    }
}

/// KL(p ‖ q) = Σ p (log p − log q); exactly 0 for identical rows.
fn kl(p: &Row<'_>, q: &Row<'_>) -> f64 {
    let mut sum = 0.0f64;
    for (&a, &b) in p.logits.iter().zip(q.logits) {
        let lp = f64::from(a) - p.lse;
        let w = lp.exp();
        if w > 0.0 {
            sum += w * (lp - (f64::from(b) - q.lse));
        }
    }
    sum.max(0.0)
}

/// Compares `reference` and `model`, both `[n, vocab]` row-major, where row `i` holds each
/// model's logits for predicting `targets[i]`.
pub fn compare(
    reference: &[f32],
    model: &[f32],
    vocab: usize,
    targets: &[u32],
) -> Result<Agreement> {
    let mut sums = Sums::default();
    sums.add(reference, model, vocab, targets)?;
    Ok(sums.agreement())
}

/// The running totals of [`compare`], fed a block of rows at a time: a long continuation is
/// compared in memory bounded by the block, not by its length × vocab.
#[derive(Debug, Clone, Default)]
pub struct Sums {
    tokens: usize,
    matches: usize,
    nonfinite: usize,
    finite: usize,
    kl_sum: f64,
    kl_max: f64,
    nll_ref: f64,
    nll_model: f64,
}

impl Sums {
    /// Adds the rows of `reference` and `model` (`[targets.len(), vocab]` each) that predict
    /// `targets`.
    pub fn add(
        &mut self,
        reference: &[f32],
        model: &[f32],
        vocab: usize,
        targets: &[u32],
    ) -> Result<()> {
        let n = targets.len();
        if vocab == 0 || reference.len() != n * vocab || model.len() != n * vocab {
            return Err(Error::Runtime(format!(
                "verify: expected {n} rows of {vocab} logits from each model, got {} and {}",
                reference.len(),
                model.len()
            )));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Runtime(format!(
                "verify: token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        self.tokens += n;
        let rows = reference.chunks_exact(vocab).zip(model.chunks_exact(vocab));
        for ((r, m), &target) in rows.zip(targets) {
            let (Some(r), Some(m)) = (Row::new(r), Row::new(m)) else {
                self.nonfinite += 1;
                continue;
            };
            if argmax(r.logits) == argmax(m.logits) {
                self.matches += 1;
            }
            let d = kl(&r, &m);
            self.kl_sum += d;
            self.kl_max = self.kl_max.max(d);
            self.nll_ref -= r.logp(target as usize);
            self.nll_model -= m.logp(target as usize);
            self.finite += 1;
        }
        Ok(())
    }

    /// The metrics over every row added.
    pub fn agreement(&self) -> Agreement {
        let (n, finite) = (self.tokens, self.finite);
        let mean = |x: f64| (finite > 0).then(|| x / finite as f64);
        Agreement {
            tokens: n,
            top1_matches: self.matches,
            top1_agreement: if n == 0 {
                0.0
            } else {
                self.matches as f64 / n as f64
            },
            kl_mean: mean(self.kl_sum),
            kl_max: (finite > 0).then_some(self.kl_max),
            perplexity_reference: mean(self.nll_ref).map(f64::exp),
            perplexity_model: mean(self.nll_model).map(f64::exp),
            nonfinite_positions: self.nonfinite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_agree_with_zero_kl() {
        let rows = [1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0];
        let a = compare(&rows, &rows, 3, &[1, 0]).unwrap();
        assert_eq!((a.top1_matches, a.top1_agreement), (2, 1.0));
        assert_eq!(a.kl_mean, Some(0.0));
        assert_eq!(a.kl_max, Some(0.0));
        assert_eq!(a.perplexity_reference, a.perplexity_model);
    }

    #[test]
    fn kl_and_perplexity_match_hand_values() {
        // p = softmax([ln 3, 0]) = (3/4, 1/4); q = (1/2, 1/2).
        let r = [3f32.ln(), 0.0];
        let m = [0.0f32, 0.0];
        let a = compare(&r, &m, 2, &[1]).unwrap();
        let want = 0.75 * (1.5f64).ln() + 0.25 * (0.5f64).ln();
        assert!((a.kl_mean.unwrap() - want).abs() < 1e-7, "{a:?}");
        assert!((a.perplexity_reference.unwrap() - 4.0).abs() < 1e-6);
        assert!((a.perplexity_model.unwrap() - 2.0).abs() < 1e-6);
        assert_eq!(a.top1_matches, 1); // ties go to the first index
    }

    #[test]
    fn nan_rows_disagree_and_are_left_out() {
        let r = [1.0f32, 0.0, 1.0, 0.0];
        let m = [f32::NAN, 0.0, 1.0, 0.0];
        let a = compare(&r, &m, 2, &[0, 0]).unwrap();
        assert_eq!((a.top1_matches, a.nonfinite_positions), (1, 1));
        assert_eq!(a.top1_agreement, 0.5);
        assert_eq!(a.kl_mean, Some(0.0));
    }

    #[test]
    fn rows_added_in_blocks_give_the_same_metrics() {
        let r = [3f32.ln(), 0.0, 1.0, 2.0, f32::NAN, 0.0];
        let m = [0.0f32, 0.0, 2.0, 1.0, 0.0, 0.0];
        let whole = compare(&r, &m, 2, &[1, 0, 1]).unwrap();
        let mut sums = Sums::default();
        sums.add(&r[..2], &m[..2], 2, &[1]).unwrap();
        sums.add(&r[2..], &m[2..], 2, &[0, 1]).unwrap();
        assert_eq!(sums.agreement(), whole);
        assert_eq!((whole.tokens, whole.nonfinite_positions), (3, 1));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(compare(&[0.0; 4], &[0.0; 3], 2, &[0, 1]).is_err());
        assert!(compare(&[0.0; 2], &[0.0; 2], 2, &[2]).is_err());
    }
}
