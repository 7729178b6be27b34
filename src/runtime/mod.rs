//! The runtime: loads a checkpoint from its on-disk format (BF16/F16/F32 or compressed-tensors
//! FP8_DYNAMIC) and runs it. Backends sit behind the small [`Backend`] trait.

pub mod chat;
pub mod config;
pub mod cpu;
pub mod generate;
pub mod sampler;
pub mod tokenizer;
pub mod verify;
pub mod weights;

/// A loaded model that can run forward passes with a KV cache.
///
/// Contract shared by every backend (CPU reference, CUDA):
/// * `forward(tokens, pos, all_logits)` runs `tokens` at positions `pos .. pos + tokens.len()`,
///   appending their keys/values to the cache (which must already hold positions `0 .. pos`),
///   and returns logits row-major: `[tokens.len(), vocab]` when `all_logits`, else only the last
///   position's `[vocab]`.
/// * `reset()` empties the cache.
pub trait Backend {
    fn forward(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> crate::Result<Vec<f32>>;
    fn reset(&mut self);
    fn vocab_size(&self) -> usize;
    /// A short human name, e.g. "cpu (8 threads)".
    fn describe(&self) -> String;
}
#[cfg(feature = "cuda")]
pub mod cuda;

/// The checks every backend makes before a forward pass: tokens given, `pos` within the cached
/// prefix, the KV cache long enough, every id inside the vocabulary.
pub fn check_forward_inputs(
    tokens: &[u32],
    pos: usize,
    cached: usize,
    max_seq: usize,
    vocab: usize,
) -> crate::Result<()> {
    use crate::Error;
    if tokens.is_empty() {
        return Err(Error::Runtime("forward: no tokens".into()));
    }
    if pos > cached {
        return Err(Error::Runtime(format!(
            "forward: position {pos} but the KV cache holds only {cached} positions"
        )));
    }
    if pos + tokens.len() > max_seq {
        return Err(Error::Runtime(format!(
            "forward: {} positions exceed the KV cache length {max_seq} (max_seq)",
            pos + tokens.len()
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Runtime(format!(
            "forward: token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}
