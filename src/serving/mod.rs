//! Will vLLM load it? The shape, GPU-generation and memory rules of vLLM's compressed-tensors
//! kernels, checked for each quantized Linear at a tensor-parallel size.
//!
//! Input is what a checkpoint holds on disk (config.json with its `quantization_config`, and
//! the safetensors headers) or the same computed from a quantize plan before anything is
//! written ([`ServingModel`]); so any recipe, preset or calibrated, is covered. The rules are
//! one table ([`rules::RULES`], [`rules::TP_RULES`], [`rules::gpu_paths`]), each citing the
//! vLLM file it comes from (docs/serving.md).

pub mod memory;
pub mod model;
pub mod rules;
pub mod scheme;
pub mod skeleton;

pub use model::{Dims, Layer, Parallel, ServingModel, Tensor};
pub use rules::{GpuPath, Violation, VLLM_VERSION};
pub use scheme::VllmScheme;

use crate::checkpoint::Checkpoint;
use crate::quantize::OutputLayout;
use crate::Result;
use serde_json::Value;
use std::path::Path;

/// The first layer that vLLM would refuse at a tensor-parallel size, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// vLLM's layer, e.g. `model.layers.0.self_attn.qkv_proj`.
    pub layer: String,
    /// The checkpoint modules it fuses.
    pub modules: Vec<String>,
    /// vLLM's scheme class (absent for a rule of the split itself).
    pub scheme: Option<&'static str>,
    #[serde(flatten)]
    pub violation: Violation,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: Vec<&str> = self
            .modules
            .iter()
            .map(|m| m.rsplit('.').next().unwrap_or(m))
            .collect();
        write!(f, "{}", self.layer)?;
        if short.len() > 1 {
            write!(f, " ({})", short.join(", "))?;
        }
        if let Some(s) = self.scheme {
            write!(f, ", {s}")?;
        }
        write!(f, ": {} [{}]", self.violation.message, self.violation.rule)
    }
}

/// The verdict at one tensor-parallel size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TpVerdict {
    pub tensor_parallel: usize,
    pub loadable: bool,
    /// The first refused layer (module order).
    pub failure: Option<Failure>,
    /// How many layers are refused.
    pub failed_layers: usize,
    /// Bytes of weights on each GPU.
    pub weight_bytes_per_gpu: u64,
}

/// One scheme of the model and the GPUs that run it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemeGpus {
    pub scheme: &'static str,
    pub gpus: &'static [GpuPath],
}

/// Checks `model` at each tensor-parallel size.
pub fn check(model: &ServingModel, sizes: &[usize]) -> Vec<TpVerdict> {
    sizes.iter().map(|&tp| check_tp(model, tp)).collect()
}

fn check_tp(model: &ServingModel, tp: usize) -> TpVerdict {
    let mut failures = model
        .layers
        .iter()
        .filter_map(|l| layer_failure(model, l, tp));
    let failure = failures.next();
    let failed_layers = failure.is_some() as usize + failures.count();
    TpVerdict {
        tensor_parallel: tp,
        loadable: failure.is_none(),
        failure,
        failed_layers,
        weight_bytes_per_gpu: memory::bytes_per_rank(model, tp),
    }
}

fn layer_failure(model: &ServingModel, layer: &Layer, tp: usize) -> Option<Failure> {
    let fail = |scheme: Option<&'static str>, violation| {
        Some(Failure {
            layer: layer.name.clone(),
            modules: layer.parts.clone(),
            scheme,
            violation,
        })
    };
    let partition = match rules::partition(&model.dims, layer, tp) {
        Ok(p) => p,
        Err(v) => return fail(None, v),
    };
    match &layer.scheme {
        Ok(None) => None,
        Ok(Some(s)) => {
            rules::first_violation(s, &partition).and_then(|v| fail(Some(s.class_name()), v))
        }
        Err(message) => fail(
            None,
            Violation {
                rule: "scheme",
                source: "vllm/model_executor/layers/quantization/compressed_tensors/\
                         compressed_tensors.py (get_scheme)",
                message: message.clone(),
            },
        ),
    }
}

/// The schemes of the model and where each runs.
pub fn scheme_gpus(model: &ServingModel) -> Vec<SchemeGpus> {
    model
        .schemes
        .iter()
        .map(|s| SchemeGpus {
            scheme: s.class_name(),
            gpus: rules::gpu_paths(s),
        })
        .collect()
}

/// The model of a compressed-tensors checkpoint on disk: config.json and the headers.
pub fn from_checkpoint(dir: &Path) -> Result<ServingModel> {
    let ck = Checkpoint::open(dir)?;
    let tensors = ck
        .tensors()
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    ServingModel::new(&ck.config, tensors)
}

/// The model of a quantize plan: the source's config.json with the `quantization_config`
/// the plan writes, and the output tensors it lays out; nothing is written.
pub fn from_plan(
    source_config: &Value,
    layout: &OutputLayout,
    quantization_config: Value,
) -> Result<ServingModel> {
    let mut config = source_config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization_config".into(), quantization_config);
    }
    let tensors = layout
        .out_tensors()
        .into_iter()
        .map(|t| Tensor {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
        })
        .collect();
    ServingModel::new(&config, tensors)
}

/// The model `plan` would write from the source checkpoint `ck` (laid out, not written).
pub fn from_source(ck: &Checkpoint, plan: &crate::recipe::QuantPlan) -> Result<ServingModel> {
    let layout = crate::quantize::plan_layout(ck, plan)?;
    from_plan(
        &ck.config,
        &layout,
        plan.quantization_config(&layout.ignored),
    )
}
