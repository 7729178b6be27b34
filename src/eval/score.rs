//! The scoring core: lm_eval's `loglikelihood`, `loglikelihood_rolling` and greedy
//! `generate_until` requests (`lm_eval/api/model.py` and `lm_eval/models/huggingface.py`,
//! 0.4.x) on any [`Backend`].
//!
//! Speed comes from the KV cache: the [`Session`] remembers the tokens its cache holds and
//! runs only the part of a new sequence after their common prefix. A document's choices
//! share its few-shot context, MMLU's few-shot prefix is shared by every question of a
//! subject; lm_eval recomputes both. The one position before the scored tokens is always
//! recomputed, since its logits row is needed.

use crate::runtime::tokenizer::TextTokenizer;
use crate::runtime::Backend;
use crate::{Error, Result};

/// Rows per forward pass when only the KV cache is wanted (bounds the activations).
const CHUNK: usize = 512;

/// A model with its tokenizer and the tokens its KV cache holds.
pub struct Session<'a> {
    backend: &'a mut dyn Backend,
    tok: &'a TextTokenizer,
    /// lm_eval's `max_length`: the longest window a request is scored in.
    max_length: usize,
    /// The tokens at positions `0..cached.len()` of the backend's KV cache.
    cached: Vec<u32>,
    /// Tokens run through the model, for throughput reports.
    pub forwarded: u64,
}

/// One scored continuation: log-likelihood, and whether greedy decoding would produce it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub ll: f64,
    pub is_greedy: bool,
}

/// The (context, continuation) token split lm_eval's `loglikelihood` makes, and whether
/// the window had to drop tokens on the left to fit `max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

impl<'a> Session<'a> {
    pub fn new(backend: &'a mut dyn Backend, tok: &'a TextTokenizer, max_length: usize) -> Self {
        backend.reset();
        // Scores are compared with lm_eval's within 1e-3 nats, not bit for bit: the packed
        // GEMM for long prompts roughly halves the CPU time of scoring (docs/eval.md).
        backend.set_fast_prefill(true);
        Session {
            backend,
            tok,
            max_length,
            cached: Vec::new(),
            forwarded: 0,
        }
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        self.tok
    }

    /// `tok_encode`: the tokenizer's own special tokens, except when the text already
    /// starts with the prefix token's text (`has_bos_prefix`).
    pub fn tok_encode(&self, text: &str) -> Result<Vec<u32>> {
        let prefix = self.tok.decode(&[self.prefix_token()?])?;
        let special = prefix.is_empty() || !text.starts_with(&prefix);
        self.tok.encode(text, special)
    }

    /// `prefix_token_id`: BOS, else EOS; it conditions an empty context and the first
    /// rolling window.
    pub fn prefix_token(&self) -> Result<u32> {
        self.tok
            .bos_id()
            .or_else(|| self.tok.eos_ids().first().copied())
            .ok_or_else(|| Error::Eval("the tokenizer has neither a BOS nor an EOS token".into()))
    }

    /// lm_eval's `loglikelihood` tokenization: trailing whitespace of the context moves to
    /// the continuation; the whole string is encoded and split after the context's own
    /// token count (`_encode_pair`, causal). An empty context becomes the prefix token.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<Encoded> {
        if context.is_empty() {
            let cont = self.tok.encode(continuation, false)?;
            let prefix = self.prefix_token()?;
            return Ok(match cont.first() {
                Some(&first) if first == prefix => Encoded {
                    context: vec![first],
                    continuation: cont[1..].to_vec(),
                },
                _ => Encoded {
                    context: vec![prefix],
                    continuation: cont,
                },
            });
        }
        let trimmed = context.trim_end();
        let (context, continuation) = (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        );
        let whole = self.tok_encode(&format!("{context}{continuation}"))?;
        let context_enc = self.tok_encode(context)?;
        let continuation = whole.get(context_enc.len()..).unwrap_or_default().to_vec();
        Ok(Encoded {
            context: context_enc,
            continuation,
        })
    }

    /// Whether scoring `enc` drops context tokens on the left (`_loglikelihood_tokens`:
    /// the window is the last `max_length + 1` tokens of context + continuation).
    pub fn truncates(&self, enc: &Encoded) -> bool {
        enc.context.len() + enc.continuation.len() > self.max_length + 1
    }

    /// Log-likelihood of `enc.continuation` after `enc.context`, as `_loglikelihood_tokens`
    /// computes it: input `(context + continuation)[-(max_length+1):][:-1]`, log-softmax of
    /// the last `len(continuation)` rows, summed at the continuation's ids; greedy when
    /// every row's argmax is the continuation's token.
    pub fn loglikelihood(&mut self, enc: &Encoded) -> Result<Scored> {
        let cont = &enc.continuation;
        if cont.is_empty() {
            return Err(Error::Eval("a continuation encodes to no tokens".into()));
        }
        if cont.len() > self.max_length {
            return Err(Error::Eval(format!(
                "a continuation of {} tokens exceeds the model's maximum length {}",
                cont.len(),
                self.max_length
            )));
        }
        let mut whole = Vec::with_capacity(enc.context.len() + cont.len());
        whole.extend_from_slice(&enc.context);
        whole.extend_from_slice(cont);
        let window = &whole[whole.len().saturating_sub(self.max_length + 1)..];
        let input = &window[..window.len() - 1];
        let first_row = input.len() - cont.len();
        self.score_rows(input, first_row, cont)
    }

    /// Runs `input` (reusing the cached prefix) and scores `targets` against the rows
    /// `first_row..`, which must be the last `targets.len()` rows.
    fn score_rows(&mut self, input: &[u32], first_row: usize, targets: &[u32]) -> Result<Scored> {
        let common = common_prefix(&self.cached, input);
        let start = common.min(first_row);
        self.cached.truncate(start);
        for chunk in input[start..first_row].chunks(CHUNK) {
            let pos = self.cached.len();
            self.backend.forward_view(chunk, pos, false)?;
            self.cached.extend_from_slice(chunk);
        }
        let pos = self.cached.len();
        let rows = &input[first_row..];
        self.forwarded += (input.len() - start) as u64;
        let logits = self.backend.forward_view(rows, pos, true)?;
        self.cached.extend_from_slice(rows);
        let vocab = logits.len() / rows.len();
        let mut out = Scored {
            ll: 0.0,
            is_greedy: true,
        };
        for (row, &target) in logits.chunks_exact(vocab).zip(targets) {
            out.ll += log_softmax_at(row, target as usize);
            out.is_greedy &= crate::runtime::sampler::argmax(row) == target;
        }
        if !out.ll.is_finite() {
            return Err(Error::Eval(format!(
                "the model's log-likelihood is {} (its logits are not finite)",
                out.ll
            )));
        }
        Ok(out)
    }

    /// `loglikelihood_rolling`: the text's tokens in disjoint windows of `max_length`
    /// (`get_rolling_token_windows` with `context_len=1` then `make_disjoint_window`): the
    /// first window is conditioned on the prefix token, each later one on the token before
    /// it. Returns the log-probability of every token, in order.
    pub fn rolling_token_logprobs(
        &mut self,
        tokens: &[u32],
        mut each: impl FnMut(&[u32], &[f32]) -> Result<()>,
    ) -> Result<f64> {
        let prefix = self.prefix_token()?;
        let mut total = 0.0;
        for (start, window) in rolling_windows(tokens.len(), self.max_length) {
            let mut input = Vec::with_capacity(window);
            match start {
                0 => input.push(prefix),
                s => input.push(tokens[s - 1]),
            }
            input.extend_from_slice(&tokens[start..start + window - 1]);
            let targets = &tokens[start..start + window];
            self.cached.clear();
            self.forwarded += input.len() as u64;
            let logits = self.backend.forward_view(&input, 0, true)?;
            let vocab = logits.len() / input.len();
            for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
                total += log_softmax_at(row, t as usize);
            }
            each(targets, logits)?;
            self.cached = input;
        }
        Ok(total)
    }

    /// Greedy `generate_until`: the context left-truncated to `max_length - max_gen_toks`,
    /// then argmax tokens until an EOS id, `max_gen_toks` tokens, or one of `until` appears
    /// in the text; the text is cut before the first stop sequence (lm_eval splits on each).
    pub fn generate_until(
        &mut self,
        context: &str,
        until: &[&str],
        max_gen_toks: usize,
    ) -> Result<String> {
        let mut ids = self.tok_encode(context)?;
        let keep = self.max_length.saturating_sub(max_gen_toks).max(1);
        if ids.len() > keep {
            ids.drain(..ids.len() - keep);
        }
        let first_row = ids.len() - 1;
        let common = common_prefix(&self.cached, &ids).min(first_row);
        self.cached.truncate(common);
        let mut next = self.next_token(&ids[common..])?;
        let mut generated = Vec::new();
        let mut text = String::new();
        while generated.len() < max_gen_toks && !self.tok.is_eos(next) {
            generated.push(next);
            text = self.tok.decode_with(&generated, true)?;
            if until.iter().any(|u| text.contains(u)) || self.cached.len() >= self.max_length {
                break;
            }
            next = self.next_token(&[next])?;
        }
        for stop in until {
            if let Some(at) = text.find(stop) {
                text.truncate(at);
            }
        }
        Ok(text)
    }

    /// Runs `tokens` after the cache and returns the argmax of the last row.
    fn next_token(&mut self, tokens: &[u32]) -> Result<u32> {
        let (head, last) = tokens.split_at(tokens.len() - 1);
        for chunk in head.chunks(CHUNK) {
            let pos = self.cached.len();
            self.backend.forward_view(chunk, pos, false)?;
            self.cached.extend_from_slice(chunk);
        }
        let pos = self.cached.len();
        self.forwarded += tokens.len() as u64;
        let row = self.backend.forward_view(last, pos, false)?;
        self.cached.extend_from_slice(last);
        Ok(crate::runtime::sampler::argmax(row))
    }
}

/// The disjoint rolling windows over `n` tokens: `(first token predicted, tokens
/// predicted)`, each at most `max_length` long.
pub fn rolling_windows(n: usize, max_length: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = max_length.min(n - start);
        out.push((start, len));
        start += len;
    }
    out
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `log_softmax(row)[target]` in f64 (lm_eval: `F.log_softmax` in f32 over f32 logits; the
/// f64 sum keeps our side from adding rounding of its own).
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::rolling_windows;

    #[test]
    fn rolling_windows_tile_the_text() {
        // lm_eval: get_rolling_token_windows(list(range(10)), -1, 4, 1) predicts 4, 4, 2.
        assert_eq!(rolling_windows(10, 4), [(0, 4), (4, 4), (8, 2)]);
        assert_eq!(rolling_windows(3, 8), [(0, 3)]);
        assert!(rolling_windows(0, 8).is_empty());
    }
}
