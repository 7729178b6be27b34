//! What a recipe asks of the calibration pipeline: the contract between `recipe` and
//! `calibrate`.
//!
//! * [`Recipe::requires_calibration`] names the first modifier that needs data, so that a
//!   command can refuse before reading anything (`GPTQModifier needs calibration data:
//!   pass --dataset`).
//! * [`Recipe::calibration`] lists the calibration steps in recipe order ([`CalibStep`]).
//! * [`Recipe::plan`] gives the [`QuantPlan`](super::QuantPlan): which Linear gets which
//!   config group (weights, input activations static or dynamic) and the KV-cache scheme.
//!   GPTQ's activation ordering per group is the group's `weights.actorder` (`static` and
//!   `weight` are the same ordering; `None`: none).
//! * [`resolve_mappings`](super::resolve_mappings) resolves a step's smoothing mappings on
//!   the model's module names.

use super::gptq::Batching;
use super::mappings::{default_mappings, Mapping, MappingKind};
use super::transform::DuoScaling;
use super::{Modifier, Recipe};

/// One calibration step, in the order the recipe's modifiers run.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibStep {
    /// SmoothQuant: per input channel `j` of each mapping, the scale
    /// `max|X_j|^strength / max|W_j|^(1-strength)` divides the smooth layer's output and
    /// multiplies the balance layers' weight columns.
    SmoothQuant {
        strength: f64,
        /// Resolve with [`resolve_mappings`](super::resolve_mappings)`(SmoothQuant, ..)`.
        mappings: Vec<Mapping>,
        /// A mapping whose smooth and balance modules are all ignored is skipped.
        ignore: Vec<String>,
    },
    /// AWQ: a grid search per mapping for the input-channel scale that minimises the
    /// output error of the balance layers quantized with the plan's weight scheme.
    Awq {
        mappings: Vec<Mapping>,
        duo_scaling: DuoScaling,
        n_grid: u64,
    },
    /// GPTQ on every Linear the plan quantizes (Hessians from the calibration inputs);
    /// the plan's static input activations and KV cache are observed as well.
    Gptq {
        block_size: u64,
        /// Dampening added to the Hessian's diagonal, as a fraction of its mean; `None`:
        /// none.
        dampening_frac: Option<f64>,
        /// How many same-shape modules may be solved at once (never changes the result).
        batching: Batching,
    },
    /// A `QuantizationModifier` that needs data: round-to-nearest weights, and observers
    /// for the plan's static input activations and KV-cache scales.
    StaticObservers,
}

impl Recipe {
    /// The name of the first modifier that needs calibration data (`GPTQModifier`,
    /// `SmoothQuantModifier`, `AWQModifier`, or a `QuantizationModifier` with static
    /// activations or a KV-cache scheme); `None` for a data-free recipe.
    pub fn requires_calibration(&self) -> Option<&'static str> {
        self.modifiers
            .iter()
            .find(|e| e.modifier.requires_data())
            .map(|e| e.modifier.class_name())
    }

    /// The calibration steps in recipe order (empty for a data-free recipe).
    pub fn calibration(&self) -> Vec<CalibStep> {
        let step = |m: &Modifier| match m {
            Modifier::SmoothQuant(sq) => Some(CalibStep::SmoothQuant {
                strength: sq.smoothing_strength,
                mappings: sq.mappings(),
                ignore: sq.ignore.clone(),
            }),
            Modifier::Awq(awq) => Some(CalibStep::Awq {
                mappings: awq.mappings(),
                duo_scaling: awq.duo_scaling,
                n_grid: awq.n_grid,
            }),
            Modifier::Gptq(g) => Some(CalibStep::Gptq {
                block_size: g.block_size,
                dampening_frac: g.dampening_frac,
                batching: g.batched_quantization,
            }),
            Modifier::Quantization(q) if q.requires_calibration_data => {
                Some(CalibStep::StaticObservers)
            }
            Modifier::Quantization(_) => None,
        };
        self.modifiers
            .iter()
            .filter_map(|e| step(&e.modifier))
            .collect()
    }
}

impl Recipe {
    /// Checks that the architecture has the default mappings the recipe relies on (a
    /// SmoothQuant or AWQ modifier without `mappings` gets the Llama family's, which
    /// llm-compressor's registries give the architectures of
    /// [`default_mappings`](super::default_mappings)).
    pub fn check_architecture(&self, architecture: &str) -> crate::Result<()> {
        for e in &self.modifiers {
            let kind = match &e.modifier {
                Modifier::SmoothQuant(sq) if sq.mappings.is_none() => MappingKind::SmoothQuant,
                Modifier::Awq(awq) if awq.mappings.is_none() => MappingKind::Awq,
                _ => continue,
            };
            default_mappings(kind, architecture)?;
        }
        Ok(())
    }
}
