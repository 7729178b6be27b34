//! AWQ as llm-compressor 0.14's `AWQModifier` (`modifiers/transform/awq/base.py`) runs it
//! in the sequential pipeline, followed by the recipe's round-to-nearest
//! `QuantizationModifier`.
//!
//! Per decoder layer: the calibration pass caches each mapping's parent inputs (the
//! attention's or MLP's normed input, or a single Linear's input) and sums `|x|` of the
//! first balance layer's input per channel (f32, sample after sample). At the layer's end
//! (`sequential_epoch_end`), in mapping order, each mapping's grid search
//! ([`search`]) picks the scales that minimise the parent's output error with fake-quantized
//! balance weights, and smooths the weights in place; then the QuantizationModifier
//! rounds the smoothed weights to nearest; then the propagation pass runs the smoothed,
//! unquantized layer (calibration runs under `DisableQuantization`) for the next layer.
//! Every cache of a layer comes from its one calibration pass: a mapping searched after
//! another sees the earlier one's smoothed weights, but the unsmoothed cached inputs.

pub mod search;

use super::forward::{BfRope, Dims, LayerWeights, Proj, Taps};
use super::layer::LayerCalibrator;
use super::outputs::LinearPlan;
use super::pipeline::{Activations, Calibrator, Pipeline, Placement};
use super::plan::AwqWork;
use super::smoothquant::{layer_part, module_names, Norm};
use crate::recipe::{resolve_mappings, DuoScaling, Mapping, MappingKind};
use crate::{Error, Result};
use search::Cached;
use search::{Ctx, Outcome};

/// The layer whose output a mapping scales down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smooth {
    Norm(Norm),
    /// `v_proj` (balanced by `o_proj`) or `up_proj` (by `down_proj`): its output rows.
    Linear(Proj),
}

/// The module whose output the loss compares: the balance layers' lowest common ancestor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// `self_attn` (q/k/v balanced together).
    Attention,
    /// `mlp` (gate/up balanced together).
    Mlp,
    /// A single balance Linear.
    Linear(Proj),
}

/// One resolved mapping inside a decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqMapping {
    pub smooth: Smooth,
    pub balance: Vec<Proj>,
    pub parent: Parent,
    pub smooth_name: String,
    pub parent_name: String,
}

impl AwqMapping {
    /// The activation stream the mapping reads (its parent's and first balance layer's input).
    fn stream(&self) -> usize {
        stream(self.balance[0])
    }
}

/// The four distinct Linear inputs of a layer: q/k/v's, o's, gate/up's, down's.
fn stream(p: Proj) -> usize {
    match p {
        Proj::Q | Proj::K | Proj::V => 0,
        Proj::O => 1,
        Proj::Gate | Proj::Up => 2,
        Proj::Down => 3,
    }
}

/// AWQ's plan for a whole model.
#[derive(Debug, Clone)]
pub struct Awq {
    pub duo: DuoScaling,
    pub n_grid: u64,
    /// Per layer, its mappings in resolution order.
    pub layers: Vec<Vec<AwqMapping>>,
    /// llm-compressor's warnings for the mappings it skips.
    pub warnings: Vec<String>,
}

impl Awq {
    /// Resolves `mappings` on the model (`_set_resolved_mappings`): a mapping that names
    /// modules the model lacks in part is an error (llm-compressor's message), one that
    /// matches nothing is skipped; `v_proj` → `o_proj` is skipped where the head shapes
    /// differ (grouped-query attention), and a mapping none of whose layers is quantized
    /// (`quantized(layer, proj)`) is skipped with a warning. qforge smooths a norm against
    /// the Linears it feeds, `v_proj` against `o_proj` and `up_proj` against `down_proj`;
    /// other mappings are refused here, before any work.
    pub fn resolve(
        duo: DuoScaling,
        n_grid: u64,
        mappings: &[Mapping],
        tensor_names: &[String],
        dims: &Dims,
        num_layers: usize,
        quantized: impl Fn(usize, Proj) -> bool,
    ) -> Result<Awq> {
        if let Some(m) = mappings.iter().find(|m| m.activation_hook_target.is_some()) {
            return Err(Error::Unsupported(format!(
                "AWQModifier: activation_hook_target ({}) is not supported yet",
                m.activation_hook_target.as_deref().unwrap_or_default()
            )));
        }
        let modules = module_names(tensor_names);
        let resolved = resolve_mappings(MappingKind::Awq, mappings, &[], &modules)?;
        let mut plan = Awq {
            duo,
            n_grid,
            layers: vec![Vec::new(); num_layers],
            warnings: Vec::new(),
        };
        let mut incompatible = 0;
        for r in resolved {
            let (layer, m) = locate(&r.smooth_name, &r.balance_names)?;
            if layer >= num_layers {
                continue;
            }
            let (v, o) = (dims.shape(Proj::V).0, dims.shape(Proj::O).1);
            if m.smooth == Smooth::Linear(Proj::V) && v != o {
                incompatible += 1;
                continue;
            }
            let targeted = match m.smooth {
                Smooth::Linear(p) => quantized(layer, p),
                Smooth::Norm(_) => false,
            } || m.balance.iter().any(|&p| quantized(layer, p));
            if !targeted {
                plan.warnings.push(format!(
                    "AWQModifier: skipping {} because no layers are targeted for quantization",
                    r.smooth_name
                ));
                continue;
            }
            plan.layers[layer].push(m);
        }
        if incompatible > 0 {
            plan.warnings.push(format!(
                "AWQModifier: {incompatible} mappings were skipped due to incompatible shapes \
                 (v_proj's outputs differ from o_proj's inputs)"
            ));
        }
        Ok(plan)
    }

    /// What the memory plan counts of AWQ on `threads` threads: the values per token the
    /// largest layer caches (one copy of each stream its mappings read), the widest cached
    /// input, and the most balance-weight elements one mapping holds beside the layer (its
    /// originals, and the largest one's fake-quantized copy while it is made).
    pub fn memory(&self, dims: &Dims, threads: u64) -> AwqWork {
        let width = |k: usize| stream_width(dims, k) as u64;
        let size = |p: Proj| {
            let (o, n) = dims.shape(p);
            (o * n) as u64
        };
        let (mut cached, mut widest, mut balance) = (0, 0, 0);
        for maps in &self.layers {
            let mut streams = [false; 4];
            for m in maps {
                streams[m.stream()] = true;
                widest = widest.max(width(m.stream()));
                let all: u64 = m.balance.iter().map(|&p| size(p)).sum();
                let largest = m.balance.iter().map(|&p| size(p)).max().unwrap_or(0);
                balance = balance.max(all + largest);
            }
            let layer: u64 = (0..4).filter(|&k| streams[k]).map(width).sum();
            cached = cached.max(layer);
        }
        AwqWork {
            cached_width: cached,
            widest_input: widest,
            balance_weights: balance,
            threads,
        }
    }

    /// The tensors this plan writes as BF16: every smoothed norm, and the smoothed
    /// Linears that `quantized(layer, proj)` says are not quantized.
    pub fn rewritten(&self, quantized: impl Fn(usize, Proj) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (layer, maps) in self.layers.iter().enumerate() {
            for name in written(maps, |p| quantized(layer, p)) {
                out.push(format!("model.layers.{layer}.{name}.weight"));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The module paths inside a layer that `maps` rewrite and the writer must store as BF16.
fn written(maps: &[AwqMapping], quantized: impl Fn(Proj) -> bool) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for m in maps {
        let smooth = match m.smooth {
            Smooth::Norm(n) => Some(n.path()),
            Smooth::Linear(p) => (!quantized(p)).then(|| p.path()),
        };
        let balance = m.balance.iter().filter(|&&p| !quantized(p));
        for path in smooth.into_iter().chain(balance.map(|p| p.path())) {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// A resolved mapping as a layer-local one, or the refusal of a form qforge does not run.
fn locate(smooth: &str, balance: &[String]) -> Result<(usize, AwqMapping)> {
    let refuse = |why: &str| {
        Error::Unsupported(format!(
            "AWQModifier: the mapping of {smooth} to {balance:?} is not supported ({why}; \
             qforge smooths a norm against the Linears it feeds, v_proj against o_proj and \
             up_proj against down_proj)"
        ))
    };
    let (layer, rest) = layer_part(smooth).ok_or_else(|| refuse("not in a decoder layer"))?;
    let mut procs = Vec::new();
    for b in balance {
        let p = layer_part(b)
            .filter(|(l, _)| *l == layer)
            .and_then(|(_, r)| Proj::ALL.into_iter().find(|p| p.path() == r))
            .ok_or_else(|| refuse("a balance layer is not a Linear of the same layer"))?;
        procs.push(p);
    }
    let smooth_kind = if let Some(n) = [Norm::Input, Norm::Post]
        .into_iter()
        .find(|n| n.path() == rest)
    {
        let feeds = match n {
            Norm::Input => [Proj::Q, Proj::K, Proj::V].as_slice(),
            Norm::Post => [Proj::Gate, Proj::Up].as_slice(),
        };
        if !procs.iter().all(|p| feeds.contains(p)) {
            return Err(refuse("a balance layer does not read the norm's output"));
        }
        Smooth::Norm(n)
    } else {
        match (rest, procs.as_slice()) {
            ("self_attn.v_proj", [Proj::O]) => Smooth::Linear(Proj::V),
            ("mlp.up_proj", [Proj::Down]) => Smooth::Linear(Proj::Up),
            _ => return Err(refuse("unsupported smooth layer")),
        }
    };
    let prefix = format!("model.layers.{layer}");
    let (parent, parent_name) = match procs.as_slice() {
        [p] => (Parent::Linear(*p), format!("{prefix}.{}", p.path())),
        [p, ..] if stream(*p) == 0 => (Parent::Attention, format!("{prefix}.self_attn")),
        _ => (Parent::Mlp, format!("{prefix}.mlp")),
    };
    Ok((
        layer,
        AwqMapping {
            smooth: smooth_kind,
            balance: procs,
            parent,
            smooth_name: smooth.to_string(),
            parent_name,
        },
    ))
}

/// The width of a layer's stream `k` (q/k/v's, o's, gate/up's, down's input).
fn stream_width(dims: &Dims, k: usize) -> usize {
    dims.shape([Proj::Q, Proj::O, Proj::Gate, Proj::Down][k]).1
}

/// What AWQ's hooks keep of one layer's calibration pass.
#[derive(Default)]
struct Cache {
    /// The inputs of each stream a mapping reads, one per sample.
    inputs: [Option<Cached>; 4],
    /// Per stream: the next sample to store.
    next: [usize; 4],
    /// Per stream: the f32 sums of `|x|` per channel, and the tokens summed.
    sums: [Option<(Vec<f32>, u64)>; 4],
    /// The first error storing an input (the scratch file), reported at the layer's end.
    error: Option<Error>,
}

impl Taps for Cache {
    fn linear_input(&mut self, proj: Proj, x: &[f32], width: usize) {
        // q/k/v (and gate/up) share one input: keep it once, from the first of them.
        if !matches!(proj, Proj::Q | Proj::O | Proj::Gate | Proj::Down) {
            return;
        }
        let k = stream(proj);
        if let Some(v) = &mut self.inputs[k] {
            if let Err(e) = v.write(self.next[k], x) {
                self.error.get_or_insert(e);
            }
            self.next[k] += 1;
        }
        if let Some((acc, n)) = &mut self.sums[k] {
            // `args[0].abs().float().sum(dim=0)` per sample, then `+=` the running sum.
            let mut s = vec![0f32; width];
            for row in x.chunks_exact(width) {
                for (a, &v) in s.iter_mut().zip(row) {
                    *a += v.abs();
                }
            }
            if acc.is_empty() {
                *acc = vec![0f32; width];
            }
            for (a, v) in acc.iter_mut().zip(s) {
                *a += v;
            }
            *n += (x.len() / width.max(1)) as u64;
        }
    }
    fn key(&mut self, _: &[f32]) {}
    fn value(&mut self, _: &[f32]) {}
}

/// AWQ, then the round-to-nearest quantization of `inner`, layer by layer.
pub struct AwqCalibrator<'a, 's> {
    pub plan: &'a Awq,
    pub inner: LayerCalibrator<'s>,
    pub dims: &'a Dims,
    pub rope: &'a BfRope,
    pub progress: &'a dyn Fn(u64),
    /// Mappings skipped at run time (non-finite parent outputs), as llm-compressor warns.
    pub warnings: Vec<String>,
    /// Tokens of each sample.
    tokens: Vec<usize>,
    /// Where the caches are kept (as the activations are).
    placement: Placement,
    cache: Cache,
}

impl<'a, 's> AwqCalibrator<'a, 's> {
    /// `acts`: the activations the pipeline runs on (the caches take their samples'
    /// lengths and their placement: in RAM, or spilled).
    pub fn new(
        plan: &'a Awq,
        inner: LayerCalibrator<'s>,
        pipe: &'a Pipeline,
        acts: &Activations,
        progress: &'a dyn Fn(u64),
    ) -> Self {
        let dims = pipe.dims();
        AwqCalibrator {
            plan,
            inner,
            dims,
            rope: pipe.rope(),
            progress,
            warnings: Vec::new(),
            tokens: (0..acts.len())
                .map(|i| acts.sample_len(i) / dims.hidden)
                .collect(),
            placement: acts.placement(),
            cache: Cache::default(),
        }
    }

    /// Grid-search passes over the samples per layer (for the progress bar).
    pub fn passes_per_layer(plan: &Awq, layer: usize) -> usize {
        plan.layers[layer].len() * (1 + search::grid(plan.duo, plan.n_grid).len())
    }
}

impl Calibrator for AwqCalibrator<'_, '_> {
    fn begin_layer(&mut self, layer: usize, w: &LayerWeights) -> Result<&mut dyn Taps> {
        // The quantizer observes nothing in the calibration pass (round to nearest).
        self.inner.begin_layer(layer, w)?;
        let mut cache = Cache::default();
        for m in &self.plan.layers[layer] {
            let k = m.stream();
            if cache.inputs[k].is_none() {
                let width = stream_width(self.dims, k);
                let lens = self.tokens.iter().map(|t| t * width).collect();
                cache.inputs[k] = Some(Cached::new(lens, &self.placement)?);
                cache.sums[k] = Some((Vec::new(), 0));
            }
        }
        self.cache = cache;
        Ok(&mut self.cache)
    }

    fn end_layer(&mut self, layer: usize, w: &mut LayerWeights) -> Result<bool> {
        if let Some(e) = self.cache.error.take() {
            return Err(e);
        }
        let plans: [Option<LinearPlan>; 7] = self.inner.plans[layer].clone();
        let ctx = Ctx {
            dims: self.dims,
            rope: self.rope,
            plans: &plans,
            duo: self.plan.duo,
            n_grid: self.plan.n_grid,
            progress: self.progress,
            tokens: &self.tokens,
            placement: &self.placement,
        };
        let mut changed = false;
        for m in &self.plan.layers[layer] {
            let k = m.stream();
            let (Some(inputs), Some((sum, n))) = (&self.cache.inputs[k], &self.cache.sums[k])
            else {
                continue;
            };
            if inputs.is_empty() || *n == 0 {
                continue;
            }
            let x_mean: Vec<f32> = sum.iter().map(|&s| s / *n as f32).collect();
            match search::smooth_mapping(&ctx, m, w, inputs, &x_mean)? {
                Outcome::Smoothed(_) => changed = true,
                Outcome::Skipped(why) => self.warnings.push(why),
            }
        }
        self.cache = Cache::default();
        let quantized = |p: Proj| plans[p as usize].is_some();
        for path in written(&self.plan.layers[layer], quantized) {
            let name = format!("model.layers.{layer}.{path}.weight");
            let (values, shape) = match path {
                "input_layernorm" => (&w.input_norm, vec![w.input_norm.len()]),
                "post_attention_layernorm" => (&w.post_norm, vec![w.post_norm.len()]),
                _ => {
                    let p = Proj::ALL
                        .into_iter()
                        .find(|p| p.path() == path)
                        .expect("a Linear path");
                    let (r, c) = w.shapes[p as usize];
                    (&w.linears[p as usize], vec![r, c])
                }
            };
            self.inner.write_bf16(name, shape, values)?;
        }
        // Round to nearest changes no weight: the smoothed ones propagate.
        self.inner.end_layer(layer, w)?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::smoothquant::llama_tensors;
    use crate::recipe::default_mappings;

    fn dims(heads: usize, kv_heads: usize) -> Dims {
        Dims {
            hidden: 128,
            inter: 384,
            heads,
            kv_heads,
            head_dim: 32,
            eps: 1e-5,
            cpu: Default::default(),
        }
    }

    fn resolve(maps: &[Mapping], d: &Dims, quantized: impl Fn(usize, Proj) -> bool) -> Result<Awq> {
        Awq::resolve(
            DuoScaling::Both,
            20,
            maps,
            &llama_tensors(2),
            d,
            2,
            quantized,
        )
    }

    /// The Llama defaults: both norms with their Linears as parents' inputs, v_proj → o_proj
    /// only when the heads are not grouped (as llm-compressor's shape check), up → down.
    #[test]
    fn default_mappings_resolve_with_their_parents() {
        let maps = default_mappings(MappingKind::Awq, "LlamaForCausalLM").unwrap();
        let gqa = resolve(&maps, &dims(4, 1), |_, _| true).unwrap();
        let parents: Vec<Parent> = gqa.layers[1].iter().map(|m| m.parent).collect();
        assert_eq!(
            parents,
            [Parent::Attention, Parent::Mlp, Parent::Linear(Proj::Down)]
        );
        assert_eq!(gqa.layers[0][2].smooth, Smooth::Linear(Proj::Up));
        assert_eq!(gqa.layers[0][2].parent_name, "model.layers.0.mlp.down_proj");
        assert!(gqa.warnings[0].contains("2 mappings were skipped"));
        let mha = resolve(&maps, &dims(4, 4), |_, _| true).unwrap();
        assert_eq!(mha.layers[0].len(), 4);
        assert_eq!(mha.layers[0][1].smooth, Smooth::Linear(Proj::V));
        assert_eq!(mha.layers[0][1].parent, Parent::Linear(Proj::O));
        assert!(mha.warnings.is_empty());
        // Nothing written as BF16 but the norms when every Linear is quantized.
        assert_eq!(
            mha.rewritten(|_, _| true),
            [
                "model.layers.0.input_layernorm.weight",
                "model.layers.0.post_attention_layernorm.weight",
                "model.layers.1.input_layernorm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ]
        );
    }

    /// By hand, hidden 128, intermediate 384, 8 heads of 32: with grouped-query attention
    /// (v→o skipped) a layer caches q/k/v's input (128), gate/up's (128) and down_proj's
    /// (384); with 8 KV heads o_proj's input (256) too. The largest mapping's weights:
    /// gate + up (2 × 384 × 128) and one more up-sized copy.
    #[test]
    fn memory_counts_each_cached_stream_once_per_layer() {
        let maps = default_mappings(MappingKind::Awq, "LlamaForCausalLM").unwrap();
        let gqa = resolve(&maps, &dims(8, 2), |_, _| true).unwrap();
        let want = |cached_width, widest_input| AwqWork {
            cached_width,
            widest_input,
            balance_weights: 3 * 384 * 128,
            threads: 2,
        };
        assert_eq!(gqa.memory(&dims(8, 2), 2), want(128 + 128 + 384, 384));
        let mha = resolve(&maps, &dims(8, 8), |_, _| true).unwrap();
        assert_eq!(mha.memory(&dims(8, 8), 2), want(128 + 256 + 128 + 384, 384));
        // Only the input norm's mapping: q/k/v's input alone.
        let norms = resolve(&maps[..1], &dims(8, 2), |_, _| true).unwrap();
        let m = norms.memory(&dims(8, 2), 2);
        assert_eq!((m.cached_width, m.widest_input), (128, 128));
    }

    /// A mapping with no quantized layer is skipped with llm-compressor's warning; an
    /// ignored balance Linear of a searched mapping is written smoothed, in BF16.
    #[test]
    fn untargeted_mappings_are_skipped_and_unquantized_balance_layers_written() {
        let maps = default_mappings(MappingKind::Awq, "LlamaForCausalLM").unwrap();
        let no_mlp = |_: usize, p: Proj| !matches!(p, Proj::Gate | Proj::Up | Proj::Down);
        let a = resolve(&maps, &dims(4, 1), no_mlp).unwrap();
        assert_eq!(a.layers[0].len(), 1);
        assert!(a.warnings.iter().any(|w| w.contains(
            "skipping model.layers.0.post_attention_layernorm because no layers are targeted"
        )));
        let no_k = |_: usize, p: Proj| p != Proj::K;
        let b = resolve(&maps[..1], &dims(4, 1), no_k).unwrap();
        assert!(b
            .rewritten(no_k)
            .contains(&"model.layers.1.self_attn.k_proj.weight".to_string()));
    }

    #[test]
    fn mappings_qforge_does_not_smooth_are_refused() {
        let m = |smooth: &str, balance: &[&str]| Mapping {
            smooth_layer: smooth.into(),
            balance_layers: balance.iter().map(|b| b.to_string()).collect(),
            activation_hook_target: None,
        };
        for (bad, why) in [
            (
                m("re:.*input_layernorm$", &["re:.*o_proj$"]),
                "does not read the norm",
            ),
            (
                m("re:.*q_proj$", &["re:.*o_proj$"]),
                "unsupported smooth layer",
            ),
        ] {
            let e = resolve(&[bad], &dims(4, 4), |_, _| true).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        let mut hooked = m("re:.*post_attention_layernorm$", &["re:.*gate_proj$"]);
        hooked.activation_hook_target = Some("mlp".into());
        let e = resolve(&[hooked], &dims(4, 4), |_, _| true).unwrap_err();
        assert!(e.to_string().contains("activation_hook_target"), "{e}");
    }
}
