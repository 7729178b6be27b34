//! The GPU memory the weights take on one tensor-parallel rank: column-parallel tensors
//! (q/gate/up) split along the outputs, k/v by KV heads (replicated when there are fewer KV
//! heads than ranks), row-parallel ones (o/down) along the inputs, the embeddings and an untied
//! `lm_head` by vocabulary rows padded to 64 (`VocabParallelEmbedding`), everything else (norms,
//! per-tensor scales, channel scales of row-parallel layers) replicated.

use super::model::{Parallel, ServingModel, Tensor};
use super::rules::kv_heads_per_rank;
use std::collections::HashMap;

/// `DEFAULT_VOCAB_PADDING_SIZE` (vllm/model_executor/layers/vocab_parallel_embedding.py).
pub const VOCAB_PADDING: usize = 64;

/// Bytes of weights on one rank of `tp`.
pub fn bytes_per_rank(model: &ServingModel, tp: usize) -> u64 {
    let mut split: HashMap<&str, (Parallel, usize)> = HashMap::new();
    for layer in &model.layers {
        for (i, part) in layer.parts.iter().enumerate() {
            split.insert(part.as_str(), (layer.parallel, i));
        }
    }
    model
        .tensors
        .iter()
        .map(|t| tensor_bytes(model, &split, t, tp))
        .sum()
}

fn tensor_bytes(
    model: &ServingModel,
    split: &HashMap<&str, (Parallel, usize)>,
    t: &Tensor,
    tp: usize,
) -> u64 {
    let bytes = t.nbytes();
    let module = t.name.rsplit_once('.').map_or("", |(m, _)| m);
    let two_d = t.shape.len() == 2;
    let tp64 = tp as u64;
    if two_d && (module == "lm_head" || module.ends_with("embed_tokens")) {
        let rows = t.shape[0];
        let padded = rows.div_ceil(VOCAB_PADDING) * VOCAB_PADDING;
        let row_bytes = bytes / rows.max(1) as u64;
        return (padded / tp) as u64 * row_bytes;
    }
    let dims = &model.dims;
    match split.get(module) {
        Some((Parallel::Qkv, part)) if two_d && *part > 0 => {
            let per_rank = kv_heads_per_rank(dims, tp) as u64;
            bytes * per_rank / dims.kv_heads as u64
        }
        Some((Parallel::Qkv | Parallel::MergedColumn, _)) if two_d => bytes.div_ceil(tp64),
        Some((Parallel::Row, _)) if two_d && t.shape[1] > 1 => bytes.div_ceil(tp64),
        _ => bytes,
    }
}
