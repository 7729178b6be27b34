//! [`CudaEngine`]: a [`CudaModel`] as the [`Engine`] that text generation drives. Greedy and
//! top-k sampling pick from candidates the GPU selects (8 bytes per candidate come back);
//! other sampling reads the whole logits row back once per token.

use super::model::CudaModel;
use super::ops::TOP_K_MAX;
use crate::runtime::generate::Engine;
use crate::runtime::Backend;
use crate::Result;

pub struct CudaEngine {
    model: CudaModel,
    logits: Vec<f32>,
    top: Vec<(f32, u32)>,
}

impl CudaEngine {
    pub fn new(model: CudaModel) -> Self {
        CudaEngine {
            model,
            logits: Vec::new(),
            top: Vec::with_capacity(TOP_K_MAX),
        }
    }
}

impl Backend for CudaEngine {
    fn forward(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        self.model.gpu.bind()?;
        self.model.forward(tokens, pos, all_logits)
    }
    fn reset(&mut self) {
        self.model.reset()
    }
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }
    fn describe(&self) -> String {
        self.model.describe()
    }
}

// SAFETY: the engine is moved between threads, never shared (`&mut` access only), and every
// forward pass first makes the model's CUDA context current on the calling thread; the raw
// cuBLASLt handle and the captured CUDA graph inside are tied to that context, not to a
// thread.
unsafe impl Send for CudaEngine {}

impl Engine for CudaEngine {
    fn forward_view(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<&[f32]> {
        self.model.gpu.bind()?;
        self.logits = self.model.forward(tokens, pos, all_logits)?;
        Ok(&self.logits)
    }

    fn top_capacity(&self) -> usize {
        TOP_K_MAX.min(self.model.vocab_size())
    }

    fn forward_top(&mut self, tokens: &[u32], pos: usize, k: usize) -> Result<&[(f32, u32)]> {
        self.model.gpu.bind()?;
        self.model.forward_top(tokens, pos, k, &mut self.top)?;
        Ok(&self.top)
    }
}
