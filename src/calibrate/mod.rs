//! Calibrated quantization (llm-compressor's GPTQ, static activation scales, KV-cache
//! scales, SmoothQuant, AWQ): a sequential pipeline that runs calibration samples through
//! the model one decoder layer at a time and quantizes each layer's Linears from what it saw.
//!
//! - [`forward`]: one Llama decoder layer in BF16, rounding as transformers does, with hooks;
//! - [`activations`]: the activations of every sample, BF16, in RAM or a scratch file;
//! - [`pipeline`]: embed, then layer by layer: calibrate, quantize, propagate;
//! - [`observer`]: llm-compressor's min/max observers and the FP8 per-tensor scale;
//! - [`layer`]: what happens to a layer after its calibration pass (scales, GPTQ);
//! - [`outputs`]: the tensors a calibrated Linear becomes;
//! - [`plan`]: the memory plan of a run, from config.json and the settings alone;
//! - [`run`]: `quantize --dataset` end to end;
//! - [`gptq`]: GPTQ itself (the Hessian and the column-by-column quantization);
//! - [`smoothquant`]: SmoothQuant (its own activation stream, then the smoothed weights);
//! - [`awq`]: AWQ (the scale grid search per mapping, then round to nearest);
//! - [`torch_dot`]: the f32 summation orders of torch's BF16 matmuls on the CPU, and
//!   [`TorchCpu`](torch_dot::TorchCpu), which CPU's orders a run reproduces;
//! - [`onednn`]: the order of oneDNN's BF16 matmul on an AVX-512 BF16 CPU;
//! - `torch_gemm`: the same Linear sums on AVX2, vectorised across outputs (bit-identical).
//!
//! See docs/calibration.md.

pub mod activations;
pub mod awq;
pub mod forward;
pub mod gptq;
pub mod layer;
pub mod observer;
pub mod onednn;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod run;
pub mod smoothquant;
pub mod torch_dot;
#[cfg(target_arch = "x86_64")]
mod torch_gemm;

pub use pipeline::{Activations, Calibrator, Pipeline};
pub use plan::{Budget, BudgetSource, MemoryPlan, Workload};
pub use run::{memory_plan, quantize_calibrated, quantize_calibrated_within};

use crate::checkpoint::DType;

/// A final output tensor of one layer, handed on as soon as it is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Little-endian bytes, as in a safetensors file.
    pub data: Vec<u8>,
}
