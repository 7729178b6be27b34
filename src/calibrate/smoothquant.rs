//! SmoothQuant as llm-compressor 0.14's `SmoothQuantModifier` does it
//! (`modifiers/transform/smoothquant/base.py`).
//!
//! llm-compressor 0.14's `oneshot` runs its default `independent` pipeline
//! (`pipelines/independent/pipeline.py`): each modifier of the recipe gets its own
//! sequential pass over the whole model, in recipe order. SmoothQuant's pass observes each
//! norm's output per layer (hooks), smooths the layer at `sequential_epoch_end` and
//! propagates the smoothed, unquantized layer; GPTQ's pass then starts again from the
//! embeddings on the smoothed model, quantizes each layer and propagates the quantized one.
//! [`run_two_streams`] does both in one layer loop with two activation streams (each layer's
//! weights read once). Checked against llm-compressor on the g128 fixture (hooks on every
//! pass): the smoothing stream's layer outputs, the smoothed weights and all seven of layer
//! 0's GPTQ Hessians are bit-identical.
//!
//! Per mapping (a norm and the Linears it feeds), with `X` the norm's output and `W` the
//! balance weights, all in BF16 as torch computes them:
//! `act = max_j(X) - min_j(X)`, `w = 2 · max over balance layers of max_i |W_ij|`,
//! `s = act^α / w^(1-α)` (`act` where `w` is 0), clamped below at 1e-5 in f32 (the clamp
//! tensor is f32, so `s` becomes f32); the norm weight becomes `bf16(norm / s)` and each
//! balance weight `bf16(W · s)` column-wise.

use super::forward::{bf16, LayerWeights, Proj, Taps};
use super::pipeline::{Activations, Calibrator, Pipeline};
use crate::quantize::state_dict_cmp;
use crate::recipe::{resolve_mappings, Mapping, MappingKind};
use crate::{Error, Result};

/// `MINIMUM_SMOOTHING_SCALE`.
const MIN_SCALE: f32 = 1e-5;

/// The two norms of a Llama decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Input,
    Post,
}

impl Norm {
    pub fn path(self) -> &'static str {
        match self {
            Norm::Input => "input_layernorm",
            Norm::Post => "post_attention_layernorm",
        }
    }

    /// The Linears that read this norm's output.
    fn consumers(self) -> &'static [Proj] {
        match self {
            Norm::Input => &[Proj::Q, Proj::K, Proj::V],
            Norm::Post => &[Proj::Gate, Proj::Up],
        }
    }

    /// The Linear whose input hook stands for the norm's output hook (same tensor).
    fn tap(self) -> Proj {
        self.consumers()[0]
    }
}

/// One resolved mapping inside a layer: the norm and the Linears balanced against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothing {
    pub norm: Norm,
    pub balance: Vec<Proj>,
}

/// SmoothQuant's plan for a whole model.
#[derive(Debug, Clone)]
pub struct SmoothQuant {
    pub strength: f64,
    /// Per layer, its mappings in resolution order.
    pub layers: Vec<Vec<Smoothing>>,
}

impl SmoothQuant {
    /// Resolves `mappings` on the model whose tensors are `tensor_names` (llm-compressor's
    /// `_resolve_mappings`: its errors for mappings that match only part of their names).
    /// qforge smooths the decoder layers' norms against the Linears that read them; any
    /// other mapping is refused here, before any work.
    pub fn resolve(
        strength: f64,
        mappings: &[Mapping],
        ignore: &[String],
        tensor_names: &[String],
        num_layers: usize,
    ) -> Result<SmoothQuant> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(Error::Recipe(format!(
                "SmoothQuantModifier: smoothing_strength {strength} is outside [0, 1]"
            )));
        }
        let modules = module_names(tensor_names);
        let resolved = resolve_mappings(MappingKind::SmoothQuant, mappings, ignore, &modules)?;
        let mut layers = vec![Vec::new(); num_layers];
        for m in resolved {
            let (layer, norm) = locate_norm(&m.smooth_name)?;
            let mut balance = Vec::new();
            for b in &m.balance_names {
                let p = locate_linear(b, layer)
                    .filter(|p| norm.consumers().contains(p))
                    .ok_or_else(|| {
                        Error::Unsupported(format!(
                            "SmoothQuantModifier: {b} does not read the output of {} \
                             (qforge balances a norm only against the Linears it feeds)",
                            m.smooth_name
                        ))
                    })?;
                balance.push(p);
            }
            if balance.is_empty() || layer >= num_layers {
                continue;
            }
            layers[layer].push(Smoothing { norm, balance });
        }
        Ok(SmoothQuant { strength, layers })
    }

    /// The tensors this plan rewrites as BF16: every smoothed norm, and the balance
    /// Linears that `quantized(layer, proj)` says are not quantized (left in BF16).
    pub fn rewritten(&self, quantized: impl Fn(usize, Proj) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (layer, maps) in self.layers.iter().enumerate() {
            for m in maps {
                out.push(format!("model.layers.{layer}.{}.weight", m.norm.path()));
                for &p in m.balance.iter().filter(|&&p| !quantized(layer, p)) {
                    out.push(format!("model.layers.{layer}.{}.weight", p.path()));
                }
            }
        }
        out
    }

    /// The hooks of layer `layer`'s calibration pass.
    pub fn begin_layer(&self, layer: usize) -> NormRanges {
        let mut r = NormRanges::default();
        for m in &self.layers[layer] {
            r.ranges[m.norm as usize] = Some(ChannelRange::default());
        }
        r
    }

    /// Smooths layer `layer` in `w` from the ranges its calibration pass observed; returns
    /// the norms it changed.
    pub fn apply(
        &self,
        layer: usize,
        w: &mut LayerWeights,
        seen: &NormRanges,
    ) -> Result<Vec<Norm>> {
        let mut changed = Vec::new();
        for m in &self.layers[layer] {
            let Some(range) = seen.ranges[m.norm as usize]
                .as_ref()
                .filter(|r| !r.min.is_empty())
            else {
                return Err(Error::Calibration(format!(
                    "model.layers.{layer}.{}: no calibration activations reached it",
                    m.norm.path()
                )));
            };
            let scales = self.scales(range, w, &m.balance);
            let norm = match m.norm {
                Norm::Input => &mut w.input_norm,
                Norm::Post => &mut w.post_norm,
            };
            for (g, &s) in norm.iter_mut().zip(&scales) {
                *g = bf16(*g / s);
            }
            for &p in &m.balance {
                let cols = w.shapes[p as usize].1;
                for row in w.linears[p as usize].chunks_mut(cols) {
                    for (x, &s) in row.iter_mut().zip(&scales) {
                        *x = bf16(*x * s);
                    }
                }
            }
            changed.push(m.norm);
        }
        Ok(changed)
    }

    /// `_calculate_smoothing_scales` and the clamp, per input channel (f32 values).
    fn scales(&self, range: &ChannelRange, w: &LayerWeights, balance: &[Proj]) -> Vec<f32> {
        let n = range.min.len();
        let mut wmax = vec![0f32; n];
        for &p in balance {
            let cols = w.shapes[p as usize].1;
            for row in w.linears[p as usize].chunks(cols) {
                for (m, x) in wmax.iter_mut().zip(row) {
                    *m = m.max(x.abs());
                }
            }
        }
        // torch: bf16 tensors, each op computed in f32 and rounded to BF16. The Python
        // float exponent of `Tensor.pow` is cast to the tensor's dtype first: 0.8 is used
        // as 0.80078125 and 1 - 0.8 as 0.2001953125 (checked against the fixture's norms).
        let alpha = bf16(self.strength as f32);
        let beta = bf16((1.0 - self.strength) as f32);
        (0..n)
            .map(|j| {
                let act = bf16(range.max[j] - range.min[j]);
                let ws = 2.0 * wmax[j];
                let s = if ws > 0.0 {
                    bf16(bf16(act.powf(alpha)) / bf16(ws.powf(beta)))
                } else {
                    act
                };
                s.max(MIN_SCALE)
            })
            .collect()
    }
}

/// SmoothQuant's own layer-by-layer pass (llm-compressor's default `independent`
/// pipeline gives each modifier its own): observes each norm's output on the smoothed,
/// unquantized model, smooths the layer at its end and propagates the smoothed layer.
pub struct SmoothCalibrator<'a> {
    pub plan: &'a SmoothQuant,
    seen: NormRanges,
}

impl<'a> SmoothCalibrator<'a> {
    pub fn new(plan: &'a SmoothQuant) -> Self {
        SmoothCalibrator {
            plan,
            seen: NormRanges::default(),
        }
    }
}

impl Calibrator for SmoothCalibrator<'_> {
    fn begin_layer(&mut self, layer: usize, _: &LayerWeights) -> Result<&mut dyn Taps> {
        self.seen = self.plan.begin_layer(layer);
        Ok(&mut self.seen)
    }

    fn end_layer(&mut self, layer: usize, w: &mut LayerWeights) -> Result<bool> {
        Ok(!self.plan.apply(layer, w, &self.seen)?.is_empty())
    }
}

impl Taps for NormRanges {
    fn linear_input(&mut self, proj: Proj, x: &[f32], width: usize) {
        self.observe(proj, x, width)
    }
    fn key(&mut self, _: &[f32]) {}
    fn value(&mut self, _: &[f32]) {}
}

/// Per-channel min and max of a `[tokens, channels]` activation over every token seen.
#[derive(Debug, Clone, Default)]
pub struct ChannelRange {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl ChannelRange {
    pub fn observe(&mut self, x: &[f32], width: usize) {
        if self.min.is_empty() {
            self.min = vec![f32::INFINITY; width];
            self.max = vec![f32::NEG_INFINITY; width];
        }
        for row in x.chunks(width) {
            for (j, &v) in row.iter().enumerate() {
                // torch.minimum/maximum propagate NaN; the pipeline stops on NaN anyway.
                self.min[j] = self.min[j].min(v);
                self.max[j] = self.max[j].max(v);
            }
        }
    }
}

/// SmoothQuant's hooks of one layer: the output range of each smoothed norm.
#[derive(Debug, Clone, Default)]
pub struct NormRanges {
    ranges: [Option<ChannelRange>; 2],
}

impl NormRanges {
    /// A Linear's input hook: the first consumer of a norm sees the norm's output.
    pub fn observe(&mut self, proj: Proj, x: &[f32], width: usize) {
        for norm in [Norm::Input, Norm::Post] {
            if norm.tap() == proj {
                if let Some(r) = &mut self.ranges[norm as usize] {
                    r.observe(x, width);
                }
            }
        }
    }
}

/// SmoothQuant followed by `cal` as llm-compressor's `independent` pipeline runs them, in
/// one layer loop carrying two activation streams: the smoothing stream (the model smoothed
/// so far, unquantized: what SmoothQuant's own sequential pass sees) and `acts`, the
/// stream of `cal` (the smoothed model with its earlier layers quantized: what the next
/// modifier's pass sees). Each layer's weights are read once; it costs one more
/// calibration and propagation pass per layer and a second copy of the activations.
pub fn run_two_streams(
    pipe: &Pipeline,
    plan: &SmoothQuant,
    acts: &mut Activations,
    cal: &mut dyn Calibrator,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let mut smoothing = acts.try_clone()?;
    let mut sq = SmoothCalibrator::new(plan);
    for layer in 0..pipe.num_layers() {
        let mut w = pipe.load_layer(layer)?;
        pipe.run_weights(layer, &mut w, &mut smoothing, &mut sq, progress)?;
        pipe.run_weights(layer, &mut w, acts, cal, progress)?;
    }
    Ok(())
}

/// Module names (tensor names without `.weight`) in `named_modules()` order.
pub(crate) fn module_names(tensor_names: &[String]) -> Vec<String> {
    let mut names: Vec<&String> = tensor_names
        .iter()
        .filter(|n| n.ends_with(".weight"))
        .collect();
    names.sort_by(|a, b| state_dict_cmp(a, b));
    names
        .into_iter()
        .map(|n| n.trim_end_matches(".weight").to_string())
        .collect()
}

fn locate_norm(name: &str) -> Result<(usize, Norm)> {
    let found = layer_part(name).and_then(|(layer, rest)| {
        [Norm::Input, Norm::Post]
            .into_iter()
            .find(|n| n.path() == rest)
            .map(|n| (layer, n))
    });
    found.ok_or_else(|| {
        Error::Unsupported(format!(
            "SmoothQuantModifier: smoothing {name} is not supported (qforge smooths the \
             decoder layers' input_layernorm and post_attention_layernorm)"
        ))
    })
}

fn locate_linear(name: &str, layer: usize) -> Option<Proj> {
    let (l, rest) = layer_part(name)?;
    (l == layer)
        .then(|| Proj::ALL.into_iter().find(|p| p.path() == rest))
        .flatten()
}

pub(crate) fn layer_part(name: &str) -> Option<(usize, &str)> {
    let (n, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// The tensor names of a Llama checkpoint `layers` deep (what the memory plan resolves
/// mappings on before the checkpoint is read).
pub(crate) fn llama_tensors(layers: usize) -> Vec<String> {
    let mut v = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..layers {
        for p in Proj::ALL {
            v.push(format!("model.layers.{l}.{}.weight", p.path()));
        }
        for n in [Norm::Input, Norm::Post] {
            v.push(format!("model.layers.{l}.{}.weight", n.path()));
        }
    }
    v.push("model.norm.weight".into());
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recipe::default_mappings;

    #[test]
    fn default_mappings_resolve_to_both_norms_of_every_layer() {
        let maps = default_mappings(MappingKind::SmoothQuant, "LlamaForCausalLM").unwrap();
        let sq = SmoothQuant::resolve(0.8, &maps, &[], &llama_tensors(3), 3).unwrap();
        for l in &sq.layers {
            assert_eq!(
                l,
                &[
                    Smoothing {
                        norm: Norm::Input,
                        balance: vec![Proj::Q, Proj::K, Proj::V]
                    },
                    Smoothing {
                        norm: Norm::Post,
                        balance: vec![Proj::Gate, Proj::Up]
                    }
                ]
            );
        }
    }

    #[test]
    fn a_balance_layer_not_fed_by_the_norm_is_refused() {
        let maps = [Mapping {
            smooth_layer: "re:.*input_layernorm".into(),
            balance_layers: vec!["re:.*gate_proj".into()],
            activation_hook_target: None,
        }];
        let e = SmoothQuant::resolve(0.5, &maps, &[], &llama_tensors(1), 1).unwrap_err();
        assert!(e.to_string().contains("does not read the output"), "{e}");
    }

    /// Hand-computed: act range 4, weight column max 0.5 → w = 1, s = 4^0.5 / 1 = 2;
    /// a zero weight column keeps the activation range; a zero range clamps to 1e-5.
    #[test]
    fn scales_follow_the_formula_and_its_clamps() {
        let sq = SmoothQuant {
            strength: 0.5,
            layers: vec![],
        };
        let range = ChannelRange {
            min: vec![-1.0, -3.0, 0.5],
            max: vec![3.0, 0.0, 0.5],
        };
        let mut w = LayerWeights {
            input_norm: vec![],
            post_norm: vec![],
            linears: Default::default(),
            shapes: [(2, 3); 7],
        };
        w.linears[Proj::Q as usize] = vec![0.5, 0.0, 0.25, -0.25, 0.0, 1.0];
        let s = sq.scales(&range, &w, &[Proj::Q]);
        assert_eq!(s, [2.0, 3.0, MIN_SCALE]);
    }
}
