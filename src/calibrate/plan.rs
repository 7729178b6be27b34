//! The memory plan of a calibrated run, worked out from config.json and the calibration
//! settings alone (no tensor or sample is read), so that `quantize --dry-run` can tell
//! before hours of work whether a run fits, and a real run prints it up front.
//!
//! Each figure follows what the code holds at its peak (see docs/calibration.md, "Memory
//! plan"); the total adds them all, so it is an upper bound of the resident memory beyond
//! the mmapped input pages.

use super::forward::{Dims, Proj};
use crate::runtime::config::ModelConfig;
use std::fmt;

/// Bytes of an f32.
const F32: u64 = 4;

/// The calibration work to plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub samples: usize,
    /// Tokens of the longest sample (`--max-seq-length`: samples are at most that long).
    pub tokens: usize,
    /// The recipe runs GPTQ (a Hessian per Linear, the solve's working memory).
    pub gptq: bool,
}

/// Peak bytes of each part of a calibrated run (one decoder layer at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// One layer's seven Linear weights and two norms, widened to f32.
    pub layer_weights: u64,
    /// One copy of the activations: samples × tokens × hidden f32.
    pub activations: u64,
    /// Copies of the activations alive at once (a layer's inputs and its outputs).
    pub activation_copies: u64,
    /// GPTQ's Hessians (cols² f32 per Linear) and the solve's working memory at the worst
    /// moment of a layer's quantization (0 without GPTQ).
    pub gptq: u64,
    /// The Hessians alone at the start of the layer's quantization (all seven alive).
    pub hessians: u64,
    /// One sample's forward-pass buffers (`forward::Scratch`).
    pub forward_scratch: u64,
    /// The largest output tensor handed to the writer (a Linear's codes, at most 2 bytes a
    /// weight: BF16 fake-quantized values are held while the codes are made).
    pub writer: u64,
}

impl MemoryPlan {
    pub fn new(config: &ModelConfig, work: &Workload) -> MemoryPlan {
        let d = Dims::new(config);
        let (h, i) = (d.hidden as u64, d.inter as u64);
        let shapes = Proj::ALL.map(|p| {
            let (o, n) = d.shape(p);
            (o as u64, n as u64)
        });
        let weights: u64 = shapes.iter().map(|(o, n)| o * n).sum();
        let tokens = work.tokens as u64;
        let kv = (d.kv_heads * d.head_dim) as u64;
        let q = (d.heads * d.head_dim) as u64;
        // Scratch: n, q, k, v, a (attention out), o, g, u, each `tokens ×` its width.
        let scratch = tokens * (h + q + kv + kv + q + h + i + i) * F32;
        let largest = shapes.iter().map(|(o, n)| o * n).max().unwrap_or(0);
        let (gptq, hessians) = if work.gptq {
            gptq_peak(&shapes)
        } else {
            (0, 0)
        };
        MemoryPlan {
            layer_weights: (weights + 2 * h) * F32,
            activations: work.samples as u64 * tokens * h * F32,
            activation_copies: 2,
            gptq,
            hessians,
            forward_scratch: scratch,
            writer: largest * 2,
        }
    }

    /// The sum of every part: the most the run holds at once.
    pub fn total(&self) -> u64 {
        self.layer_weights
            + self.activations * self.activation_copies
            + self.gptq
            + self.forward_scratch
            + self.writer
    }
}

/// GPTQ quantizes a layer's Linears in [`Proj::ALL`] order, each taking (and then dropping)
/// its own Hessian; while one is solved, the Hessians of those after it are still alive.
/// The solve holds, besides its Hessian, the normalised copy, faer's matrix, its Cholesky
/// factor and the inverse (4 × cols² f32) and the weight being updated (rows × cols f32).
/// Returns (the peak, the Hessians alone at the start).
fn gptq_peak(shapes: &[(u64, u64); 7]) -> (u64, u64) {
    let hessian = |n: u64| n * n * F32;
    let all: u64 = shapes.iter().map(|&(_, n)| hessian(n)).sum();
    let mut alive = all;
    let mut peak = 0;
    for &(o, n) in shapes {
        peak = peak.max(alive + 4 * hessian(n) + o * n * F32);
        alive -= hessian(n);
    }
    (peak, all)
}

/// Decimal gigabytes with two decimals (as `df -H` and disk vendors count).
fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory plan (peak, upper bound):")?;
        writeln!(f, "  layer weights (f32)      {}", gb(self.layer_weights))?;
        writeln!(
            f,
            "  activations (f32, RAM)   {} x {} copies",
            gb(self.activations),
            self.activation_copies
        )?;
        if self.gptq > 0 {
            writeln!(
                f,
                "  GPTQ Hessians + solve    {} (Hessians alone {})",
                gb(self.gptq),
                gb(self.hessians)
            )?;
        }
        writeln!(f, "  forward scratch          {}", gb(self.forward_scratch))?;
        writeln!(f, "  writer                   {}", gb(self.writer))?;
        write!(f, "  total                    {}", gb(self.total()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The g128 fixture's shape (`fixtures/schemes/g128-bf16/config.json`).
    fn g128() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 8,
            "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2,
            "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "max_position_embeddings": 8192
        });
        ModelConfig::from_json(&json).unwrap()
    }

    #[test]
    fn g128_plan_matches_the_numbers_worked_out_by_hand() {
        let work = Workload {
            samples: 32,
            tokens: 64,
            gptq: true,
        };
        let p = MemoryPlan::new(&g128(), &work);
        // 8 heads × 32 = 256 wide attention: q 256×128, o 128×256; k, v 64×128; gate, up
        // 384×128; down 128×384; two norms of 128.
        assert_eq!(
            p.layer_weights,
            (2 * 32768 + 2 * 8192 + 3 * 49152 + 256) * 4
        );
        assert_eq!(p.activations, 32 * 64 * 128 * 4);
        assert_eq!(p.activation_copies, 2);
        // Five Hessians of 128² (q, k, v, gate, up), o_proj's 256² and down_proj's 384².
        assert_eq!(p.hessians, (5 * 128 * 128 + 256 * 256 + 384 * 384) * 4);
        // Worst moment: down_proj's solve, its Hessian + 4 copies + the weight in f32.
        assert_eq!(p.gptq, 5 * 384 * 384 * 4 + 128 * 384 * 4);
        // n 128, q 256, k 64, v 64, a 256, o 128, g 384, u 384 per token.
        assert_eq!(p.forward_scratch, 64 * 1664 * 4);
        assert_eq!(p.writer, 49152 * 2);
        assert_eq!(p.total(), 6_685_696);
    }

    #[test]
    fn without_gptq_there_are_no_hessians() {
        let work = Workload {
            samples: 32,
            tokens: 64,
            gptq: false,
        };
        let p = MemoryPlan::new(&g128(), &work);
        assert_eq!((p.gptq, p.hessians), (0, 0));
        assert_eq!(p.total(), 6_685_696 - 3_145_728);
    }

    #[test]
    fn llama_70b_plan_with_512_samples_of_2048_tokens() {
        let shape = crate::synthetic::named_shape("llama-70b").unwrap();
        let config = ModelConfig::from_json(&shape.config()).unwrap();
        let work = Workload {
            samples: 512,
            tokens: 2048,
            gptq: true,
        };
        let p = MemoryPlan::new(&config, &work);
        // 512 × 2048 × 8192 f32 per copy.
        assert_eq!(p.activations, 34_359_738_368);
        // down_proj's 28672² Hessian and its solve dominate GPTQ.
        assert_eq!(p.gptq, 5 * 28672 * 28672 * 4 + 8192 * 28672 * 4);
        let text = p.to_string();
        assert!(
            text.contains("activations (f32, RAM)   34.36 GB x 2 copies"),
            "{text}"
        );
    }
}
