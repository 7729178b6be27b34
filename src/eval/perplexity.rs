//! `qforge eval --perplexity FILE`: word and byte perplexity and bits per byte as lm_eval's
//! `wikitext` task computes them (`tasks/wikitext/wikitext.yaml`, `loglikelihood_rolling`),
//! and, against a reference, the KL-divergence statistics of llama.cpp's perplexity tool
//! (`--kl-divergence`): mean, median, 99th and 99.9th percentile KL(reference ‖ model) per
//! token, top-1 agreement, mean Δp of the actual next token.

use serde::Serialize;
use std::path::Path;

use super::score::{log_softmax_at, rolling_windows};
use crate::runtime::tokenizer::TextTokenizer;
use crate::runtime::{self, Backend, Device};
use crate::{Error, Result};

/// Rows per forward pass (bounds the `[rows, vocab]` logits of both models).
const ROWS: usize = 64;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Perplexity {
    pub tokens: usize,
    pub words: usize,
    pub bytes: usize,
    pub loglikelihood: f64,
    pub word_perplexity: f64,
    pub byte_perplexity: f64,
    pub bits_per_byte: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KlStats {
    pub mean: f64,
    pub median: f64,
    pub p99: f64,
    pub p999: f64,
    /// Share of tokens where both models' argmax agree.
    pub top1_agreement: f64,
    /// Mean of p_model(token) − p_reference(token), the token that follows in the text.
    pub mean_delta_p: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    pub context: usize,
    pub model: Perplexity,
    pub reference: Option<Perplexity>,
    pub kl: Option<KlStats>,
}

/// wikitext's `process_results`: words = `len(re.split(r"\s+", doc))` (leading or trailing
/// whitespace counts an empty word, as in Python), bytes = UTF-8 length.
pub fn count_words(text: &str) -> usize {
    static WS: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\s+").expect("valid regex"));
    WS.find_iter(text).count() + 1
}

fn summarize(ll: f64, tokens: usize, text: &str) -> Perplexity {
    let (words, bytes) = (count_words(text), text.len());
    Perplexity {
        tokens,
        words,
        bytes,
        loglikelihood: ll,
        word_perplexity: (-ll / words as f64).exp(),
        byte_perplexity: (-ll / bytes as f64).exp(),
        bits_per_byte: -ll / bytes as f64 / std::f64::consts::LN_2,
    }
}

/// Scores the text of `file` on `model` (and `reference`) in rolling windows of `context`.
pub fn perplexity(
    model: &Path,
    reference: Option<&Path>,
    file: &Path,
    context: usize,
    device: Device,
) -> Result<PerplexityReport> {
    let text = crate::checkpoint::input::read_to_string(file).map_err(|e| Error::io(file, e))?;
    if text.trim().is_empty() {
        return Err(Error::Eval(format!(
            "{}: the text is empty",
            file.display()
        )));
    }
    if context < 2 {
        return Err(Error::Eval("--context must be at least 2 tokens".into()));
    }
    let tok = TextTokenizer::load(model)?;
    if let Some(r) = reference {
        super::check_same_tokenizer(&tok, &TextTokenizer::load(r)?, r)?;
    }
    let prefix = tok
        .bos_id()
        .or_else(|| tok.eos_ids().first().copied())
        .ok_or_else(|| Error::Eval("the tokenizer has neither a BOS nor an EOS token".into()))?;
    let ids = tok.encode(&text, true)?;
    let mut m = runtime::load(model, device, Some(context))?;
    let mut r = reference
        .map(|r| runtime::load(r, device, Some(context)))
        .transpose()?;
    let mut acc = Accum::default();
    for (start, len) in rolling_windows(ids.len(), context) {
        let mut input = vec![if start == 0 { prefix } else { ids[start - 1] }];
        input.extend_from_slice(&ids[start..start + len - 1]);
        let targets = &ids[start..start + len];
        m.reset();
        if let Some(r) = r.as_mut() {
            r.reset();
        }
        for (c, chunk) in input.chunks(ROWS).enumerate() {
            let pos = c * ROWS;
            let t = &targets[pos..pos + chunk.len()];
            score_chunk(m.as_mut(), r.as_mut(), chunk, pos, t, &mut acc)?;
        }
    }
    let model_ppl = summarize(acc.ll, ids.len(), &text);
    let (reference, kl) = match r {
        Some(_) => (
            Some(summarize(acc.ref_ll, ids.len(), &text)),
            Some(acc.kl_stats()),
        ),
        None => (None, None),
    };
    Ok(PerplexityReport {
        context,
        model: model_ppl,
        reference,
        kl,
    })
}

#[derive(Debug, Default)]
struct Accum {
    ll: f64,
    ref_ll: f64,
    kl: Vec<f64>,
    agree: usize,
    delta_p: f64,
}

impl Accum {
    fn kl_stats(&mut self) -> KlStats {
        let n = self.kl.len();
        let mean = self.kl.iter().sum::<f64>() / n as f64;
        self.kl.sort_by(f64::total_cmp);
        let q = |p: f64| self.kl[((p * (n - 1) as f64).round() as usize).min(n - 1)];
        KlStats {
            mean,
            median: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            top1_agreement: self.agree as f64 / n as f64,
            mean_delta_p: self.delta_p / n as f64,
        }
    }
}

fn score_chunk(
    m: &mut dyn Backend,
    r: Option<&mut Box<dyn Backend>>,
    chunk: &[u32],
    pos: usize,
    targets: &[u32],
    acc: &mut Accum,
) -> Result<()> {
    let logits = m.forward_view(chunk, pos, true)?.to_vec();
    let vocab = logits.len() / chunk.len();
    let Some(r) = r else {
        for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
            acc.ll += log_softmax_at(row, t as usize);
        }
        return Ok(());
    };
    let ref_logits = r.forward_view(chunk, pos, true)?;
    for ((row, rrow), &t) in logits
        .chunks_exact(vocab)
        .zip(ref_logits.chunks_exact(vocab))
        .zip(targets)
    {
        let (lp, rp) = (log_softmax(row), log_softmax(rrow));
        let t = t as usize;
        acc.ll += lp[t];
        acc.ref_ll += rp[t];
        acc.kl.push(
            rp.iter()
                .zip(&lp)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
                .max(0.0),
        );
        acc.agree += usize::from(
            crate::runtime::sampler::argmax(row) == crate::runtime::sampler::argmax(rrow),
        );
        acc.delta_p += lp[t].exp() - rp[t].exp();
    }
    Ok(())
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::count_words;

    #[test]
    fn words_count_like_python_re_split() {
        // len(re.split(r"\s+", s)) for each s
        assert_eq!(count_words("a b  c"), 3);
        assert_eq!(count_words(" a b\n"), 4);
        assert_eq!(count_words("word"), 1);
    }
}
