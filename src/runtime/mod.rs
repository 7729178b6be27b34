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
