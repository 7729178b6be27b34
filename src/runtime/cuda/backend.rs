//! [`CudaModel`] as a [`Backend`]: greedy decoding and top-k sampling pick from candidates
//! the GPU selects (8 bytes per candidate come back); other sampling reads the whole logits
//! row back once per token. Every call first makes the model's CUDA context current on the
//! calling thread.

use super::model::CudaModel;
use super::ops;
use crate::runtime::Backend;
use crate::Result;

// SAFETY: the model is moved between threads, never shared (`&mut` access only), and every
// forward pass first makes the model's CUDA context current on the calling thread; the raw
// cuBLASLt handle and the captured CUDA graph inside are tied to that context, not to a
// thread.
unsafe impl Send for CudaModel {}

impl Backend for CudaModel {
    fn forward_view(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<&[f32]> {
        self.gpu.bind()?;
        // `run` appends the logits: the buffer is reused, so empty it first.
        let mut out = std::mem::take(&mut self.logits);
        out.clear();
        self.run(tokens, pos, all_logits, Some(&mut out), None)?;
        self.logits = out;
        Ok(&self.logits)
    }

    fn weight_bytes_per_token(&self) -> u64 {
        self.weights.bytes_per_token()
    }

    fn top_capacity(&self) -> usize {
        ops::TOP_K_MAX.min(self.config.vocab_size)
    }

    fn forward_top(&mut self, tokens: &[u32], pos: usize, k: usize) -> Result<&[(f32, u32)]> {
        self.gpu.bind()?;
        let mut top = std::mem::take(&mut self.top);
        let done = self.top_into(tokens, pos, k, &mut top);
        self.top = top;
        done.map(|()| self.top.as_slice())
    }

    fn next_token(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        self.gpu.bind()?;
        self.forward_argmax(tokens, pos)
    }

    fn reset(&mut self) {
        self.cached = 0;
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn describe(&self) -> String {
        let i = &self.gpu.info;
        let graphs = match (&self.graph_note, self.graphs) {
            (Some(why), _) => why.as_str(),
            (None, true) if self.gpu.pdl() => "decode as a CUDA graph, programmatic launches",
            (None, true) => "decode as a CUDA graph",
            (None, false) => "CUDA graphs off",
        };
        let gemv = self.tuning.as_ref().map(|t| format!(", {}", t.describe()));
        format!(
            "cuda ({}, {}, {}, {graphs}{})",
            i.name,
            i.arch,
            self.gemm.note,
            gemv.unwrap_or_default()
        )
    }
}
