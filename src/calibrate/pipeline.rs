//! The sequential pipeline (llm-compressor 0.14 `SequentialPipeline`, one decoder layer per
//! subgraph): embed every sample; then for each layer read only its weights, run every
//! sample through it with the calibration hooks on, let the [`Calibrator`] quantize the
//! layer, and run the layer again with hooks off to produce the next layer's inputs when the
//! calibrator changed the weights (llm-compressor's default `propagate_error=True` runs this
//! second pass; its `DisableQuantization` context means only weights rewritten in place —
//! GPTQ's fake-quantized ones — change what propagates).
//!
//! Samples go through a layer several at a time, one a thread ([`Pipeline::parallel`], as
//! the memory plan allows): each sample's arithmetic is the same as alone, and the hooks'
//! tensors are recorded and replayed in sample order, so that every observer and Hessian
//! sums them in the same order whatever the number of threads.

pub use super::activations::{Activations, Placement};
use super::forward::{
    count_forward, layer_forward, BfRope, Dims, LayerWeights, NoTaps, Proj, Scratch, Taps,
};
use super::torch_dot::TorchCpu;
use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::numerics;
use crate::runtime::config::ModelConfig;
use crate::{Error, Result};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// What quantizes each layer from what its hooks saw.
pub trait Calibrator {
    /// Called before layer `layer` runs; returns the hooks for its calibration pass.
    fn begin_layer(&mut self, layer: usize, w: &LayerWeights) -> Result<&mut dyn Taps>;
    /// Called once every sample went through layer `layer`: computes its quantization
    /// parameters and hands its final tensors on. Replaces in `w` the weights that must
    /// propagate quantized and returns true if it did.
    fn end_layer(&mut self, layer: usize, w: &mut LayerWeights) -> Result<bool>;
    /// True when `end_layer(layer)` is sure to return true: the calibration pass's outputs
    /// are then never used, and it stops at down_proj's input (a quarter of the Linear work
    /// of a Llama layer).
    fn propagates(&self, _layer: usize) -> bool {
        false
    }
}

/// A calibrator that observes and changes nothing (a plain forward pass).
pub struct Passthrough;

impl Calibrator for Passthrough {
    fn begin_layer(&mut self, _: usize, _: &LayerWeights) -> Result<&mut dyn Taps> {
        Ok(self)
    }

    fn end_layer(&mut self, _: usize, _: &mut LayerWeights) -> Result<bool> {
        Ok(false)
    }
}

impl Taps for Passthrough {
    fn linear_input(&mut self, _: Proj, _: &[f32], _: usize) {}
    fn key(&mut self, _: &[f32]) {}
    fn value(&mut self, _: &[f32]) {}
}

/// The layer-by-layer forward pass over a checkpoint's weights.
pub struct Pipeline<'a> {
    ck: &'a Checkpoint,
    dims: Dims,
    rope: BfRope,
    num_layers: usize,
    vocab: usize,
    /// Where the activations are kept (RAM unless the memory plan spills them).
    placement: Placement,
    /// Samples run through a layer at once, one a thread.
    parallel: usize,
}

impl<'a> Pipeline<'a> {
    /// `max_seq`: the longest sample (RoPE tables are built up to it).
    pub fn new(ck: &'a Checkpoint, config: &ModelConfig, max_seq: usize) -> Pipeline<'a> {
        Pipeline {
            ck,
            dims: Dims::new(config),
            rope: BfRope::new(config, max_seq),
            num_layers: config.num_layers,
            vocab: config.vocab_size,
            placement: Placement::Ram,
            parallel: 1,
        }
    }

    /// Runs up to `n` samples through a layer at once, one a thread (the memory plan's
    /// `parallel`: each holds its own forward buffers). The results do not depend on it.
    pub fn parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    /// Reproduces torch's arithmetic on `cpu` (default: AVX2).
    pub fn torch_cpu(mut self, cpu: TorchCpu) -> Self {
        self.dims.cpu = cpu;
        self
    }

    /// Keeps the activations in a scratch file in `dir` instead of RAM.
    pub fn spill_to(mut self, dir: &std::path::Path) -> Self {
        self.placement = Placement::Spill(dir.to_path_buf());
        self
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The shapes of the forward pass (for a transform that reruns parts of a layer).
    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// The rotary tables, up to the longest sample.
    pub fn rope(&self) -> &BfRope {
        &self.rope
    }

    /// The embedding rows of every sample (`model.embed_tokens.weight`, read row by row).
    pub fn embed(&self, samples: &[Vec<u32>]) -> Result<Activations> {
        let t = self.tensor("model.embed_tokens.weight")?;
        let h = self.dims.hidden;
        let row_bytes = h * t.dtype.size();
        let data = self.ck.data(t);
        let lens = samples.iter().map(|s| s.len() * h).collect();
        let mut out = Activations::new(lens, &self.placement)?;
        let mut x = Vec::new();
        for (i, ids) in samples.iter().enumerate() {
            x.clear();
            for &id in ids {
                let id = id as usize;
                if id >= self.vocab || (id + 1) * row_bytes > data.len() {
                    return Err(Error::Calibration(format!(
                        "sample {i}: token id {id} is outside the vocabulary of {} tokens",
                        self.vocab
                    )));
                }
                let row = &data[id * row_bytes..(id + 1) * row_bytes];
                x.extend(numerics::to_f32(t.dtype, row)?);
            }
            out.write(i, &x)?;
        }
        // The rows read stay resident (a 128k vocabulary's table is 0.5 GB) unless dropped.
        self.ck.release(t);
        Ok(out)
    }

    /// Reads layer `i`'s norms and Linear weights.
    pub fn load_layer(&self, i: usize) -> Result<LayerWeights> {
        let read = |path: &str| -> Result<Vec<f32>> {
            let t = self.tensor(&format!("model.layers.{i}.{path}.weight"))?;
            let v = numerics::to_f32(t.dtype, self.ck.data(t))?;
            self.ck.release(t);
            Ok(v)
        };
        let mut linears: [Vec<f32>; 7] = Default::default();
        for p in Proj::ALL {
            let w = read(p.path())?;
            let (o, n) = self.dims.shape(p);
            if w.len() != o * n {
                return Err(Error::Calibration(format!(
                    "model.layers.{i}.{}.weight has {} elements; the config implies [{o}, {n}]",
                    p.path(),
                    w.len()
                )));
            }
            linears[p as usize] = w;
        }
        Ok(LayerWeights {
            input_norm: read("input_layernorm")?,
            post_norm: read("post_attention_layernorm")?,
            linears,
            shapes: Proj::ALL.map(|p| self.dims.shape(p)),
        })
    }

    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.ck.get(name).ok_or_else(|| {
            Error::Calibration(format!("tensor {name} is missing from the checkpoint"))
        })
    }

    /// Runs every layer over `acts` (replaced by the last layer's outputs), calling
    /// `progress` once per sample and pass.
    pub fn run(
        &self,
        acts: &mut Activations,
        cal: &mut dyn Calibrator,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        for layer in 0..self.num_layers {
            self.run_layer_with(layer, acts, cal, progress)?;
        }
        Ok(())
    }

    /// Runs layer `layer` over `acts` (replaced by its outputs).
    pub fn run_layer(
        &self,
        layer: usize,
        acts: &mut Activations,
        cal: &mut dyn Calibrator,
    ) -> Result<()> {
        self.run_layer_with(layer, acts, cal, &|_| {})
    }

    fn run_layer_with(
        &self,
        layer: usize,
        acts: &mut Activations,
        cal: &mut dyn Calibrator,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let mut w = self.load_layer(layer)?;
        self.run_weights(layer, &mut w, acts, cal, progress)
    }

    /// Runs layer `layer` with the weights `w` (the calibrator may change them) over
    /// `acts` (replaced by its outputs): for a transform that rewrote the weights first.
    pub fn run_weights(
        &self,
        layer: usize,
        w: &mut LayerWeights,
        acts: &mut Activations,
        cal: &mut dyn Calibrator,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let mut scratch: Vec<Scratch> = (0..self.parallel).map(|_| Scratch::default()).collect();
        let mut outs = acts.empty_like()?;
        let last = layer + 1 == self.num_layers;
        // A pass whose outputs the propagation pass recomputes stops early; the last layer
        // has no propagation pass.
        let outputs = last || !cal.propagates(layer);
        let (propagates, mut nan) = {
            let taps = cal.begin_layer(layer, w)?;
            let nan = self.pass(
                w,
                acts,
                &mut outs,
                Some(taps),
                outputs,
                &mut scratch,
                progress,
            )?;
            (cal.end_layer(layer, w)?, nan)
        };
        if !outputs && !propagates {
            return Err(Error::Calibration(format!(
                "model.layers.{layer}: the calibrator said it would change the weights and \
                 did not (its outputs were not computed)"
            )));
        }
        if propagates && !last {
            nan = self.pass(w, acts, &mut outs, None, true, &mut scratch, progress)?;
        }
        // The last layer's outputs feed no observer: no propagation pass, no NaN check.
        // NaN in a layer's outputs would poison every observer of the next layer: stop
        // there. (Inf is kept: llm-compressor writes the infinite scale it observes, and so
        // does qforge.)
        if let (Some((i, p)), false) = (nan, last) {
            return Err(Error::Calibration(format!(
                "model.layers.{layer} produced a NaN activation (sample {i}, element {p}); \
                 the model's weights or the calibration data are broken"
            )));
        }
        *acts = outs;
        Ok(())
    }

    /// Runs every sample of `ins` through the layer into `outs`, `scratch.len()` samples at
    /// once (only those are widened to f32); their hooks' tensors reach `taps` in sample
    /// order. Returns where the first NaN output is, if any (none when `outputs` is false).
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        w: &LayerWeights,
        ins: &Activations,
        outs: &mut Activations,
        mut taps: Option<&mut dyn Taps>,
        outputs: bool,
        scratch: &mut [Scratch],
        progress: &dyn Fn(u64),
    ) -> Result<Option<(usize, usize)>> {
        let mut nan = None;
        let par = scratch.len().max(1);
        let mut xs = vec![Vec::new(); par];
        let mut recs: Vec<Recording> = (0..par).map(|_| Recording::default()).collect();
        for start in (0..ins.len()).step_by(par) {
            let n = par.min(ins.len() - start);
            for (j, x) in xs[..n].iter_mut().enumerate() {
                ins.read(start + j, x)?;
            }
            let clock = Instant::now();
            let mut spent_in_taps = Duration::ZERO;
            if n == 1 {
                // Alone: the hooks see the tensors as they are made (nothing recorded).
                let mut none = NoTaps;
                let inner: &mut dyn Taps = match taps.as_deref_mut() {
                    Some(t) => t,
                    None => &mut none,
                };
                let mut timed = TimedTaps {
                    inner,
                    spent: Duration::ZERO,
                };
                let (x, s) = (&mut xs[0], &mut scratch[0]);
                layer_forward(w, &self.dims, &self.rope, x, &mut timed, s, outputs);
                spent_in_taps = timed.spent;
            } else {
                let observe = taps.is_some();
                xs[..n]
                    .par_iter_mut()
                    .zip(scratch.par_iter_mut())
                    .zip(recs.par_iter_mut())
                    .for_each(|((x, s), rec)| {
                        let t: &mut dyn Taps = if observe { rec } else { &mut NoTaps };
                        layer_forward(w, &self.dims, &self.rope, x, t, s, outputs);
                    });
            }
            let tokens: usize = xs[..n].iter().map(|x| x.len() / self.dims.hidden).sum();
            count_forward(clock.elapsed().saturating_sub(spent_in_taps), tokens as u64);
            if let (Some(taps), true) = (taps.as_deref_mut(), n > 1) {
                recs[..n].iter_mut().for_each(|r| r.replay(taps));
            }
            for (j, x) in xs[..n].iter().enumerate() {
                if nan.is_none() && outputs {
                    nan = x.iter().position(|v| v.is_nan()).map(|p| (start + j, p));
                }
                outs.write(start + j, x)?;
                progress(1);
            }
        }
        Ok(nan)
    }
}

/// Taps that time the taps they wrap (their time is not the forward's).
struct TimedTaps<'a> {
    inner: &'a mut dyn Taps,
    spent: Duration,
}

impl Taps for TimedTaps<'_> {
    fn linear_input(&mut self, proj: Proj, x: &[f32], width: usize) {
        let start = Instant::now();
        self.inner.linear_input(proj, x, width);
        self.spent += start.elapsed();
    }
    fn key(&mut self, k: &[f32]) {
        let start = Instant::now();
        self.inner.key(k);
        self.spent += start.elapsed();
    }
    fn value(&mut self, v: &[f32]) {
        let start = Instant::now();
        self.inner.value(v);
        self.spent += start.elapsed();
    }
}

/// One sample's hook calls, kept to be replayed in sample order once the samples run
/// together are done. Consecutive calls with the same tensor (q/k/v's input, gate/up's)
/// keep one copy.
#[derive(Default)]
struct Recording {
    calls: Vec<(Call, usize)>,
    tensors: Vec<Vec<f32>>,
    used: usize,
}

#[derive(Clone, Copy)]
enum Call {
    Linear(Proj, usize),
    Key,
    Value,
}

impl Recording {
    /// Index of a copy of `x` (the previous one if it holds the same bits).
    fn keep(&mut self, x: &[f32]) -> usize {
        let bits: &[u32] = bytemuck::cast_slice(x);
        if self.used > 0 && bytemuck::cast_slice::<f32, u32>(&self.tensors[self.used - 1]) == bits {
            return self.used - 1;
        }
        if self.used == self.tensors.len() {
            self.tensors.push(Vec::new());
        }
        let t = &mut self.tensors[self.used];
        t.clear();
        t.extend_from_slice(x);
        self.used += 1;
        self.used - 1
    }

    /// Makes the recorded calls on `taps`, in order, and empties the recording.
    fn replay(&mut self, taps: &mut dyn Taps) {
        for &(call, i) in &self.calls {
            let x = &self.tensors[i];
            match call {
                Call::Linear(p, width) => taps.linear_input(p, x, width),
                Call::Key => taps.key(x),
                Call::Value => taps.value(x),
            }
        }
        self.calls.clear();
        self.used = 0;
    }
}

impl Taps for Recording {
    fn linear_input(&mut self, proj: Proj, x: &[f32], width: usize) {
        let i = self.keep(x);
        self.calls.push((Call::Linear(proj, width), i));
    }
    fn key(&mut self, k: &[f32]) {
        let i = self.keep(k);
        self.calls.push((Call::Key, i));
    }
    fn value(&mut self, v: &[f32]) {
        let i = self.keep(v);
        self.calls.push((Call::Value, i));
    }
}
