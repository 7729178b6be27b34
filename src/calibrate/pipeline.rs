//! The sequential pipeline (llm-compressor 0.14 `SequentialPipeline`, one decoder layer per
//! subgraph): embed every sample; then for each layer read only its weights, run every
//! sample through it with the calibration hooks on, let the [`Calibrator`] quantize the
//! layer, and run the layer again with hooks off to produce the next layer's inputs when the
//! calibrator changed the weights (llm-compressor's default `propagate_error=True` runs this
//! second pass; its `DisableQuantization` context means only weights rewritten in place —
//! GPTQ's fake-quantized ones — change what propagates).

pub use super::activations::{Activations, Placement};
use super::forward::{layer_forward, BfRope, Dims, LayerWeights, NoTaps, Proj, Scratch, Taps};
use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::numerics;
use crate::runtime::config::ModelConfig;
use crate::{Error, Result};

/// What quantizes each layer from what its hooks saw.
pub trait Calibrator {
    /// Called before layer `layer` runs; returns the hooks for its calibration pass.
    fn begin_layer(&mut self, layer: usize, w: &LayerWeights) -> Result<&mut dyn Taps>;
    /// Called once every sample went through layer `layer`: computes its quantization
    /// parameters and hands its final tensors on. Replaces in `w` the weights that must
    /// propagate quantized and returns true if it did.
    fn end_layer(&mut self, layer: usize, w: &mut LayerWeights) -> Result<bool>;
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
        }
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
        let mut scratch = Scratch::default();
        let mut outs = acts.empty_like()?;
        let (propagates, mut nan) = {
            let taps = cal.begin_layer(layer, w)?;
            let nan = self.pass(w, acts, &mut outs, taps, &mut scratch, progress)?;
            (cal.end_layer(layer, w)?, nan)
        };
        // The last layer's outputs feed no observer: no propagation pass, no NaN check.
        let last = layer + 1 == self.num_layers;
        if propagates && !last {
            nan = self.pass(w, acts, &mut outs, &mut NoTaps, &mut scratch, progress)?;
        }
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

    /// Runs every sample of `ins` through the layer into `outs`, one sample at a time (only
    /// one is ever widened to f32). Returns where the first NaN output is, if any.
    fn pass(
        &self,
        w: &LayerWeights,
        ins: &Activations,
        outs: &mut Activations,
        taps: &mut dyn Taps,
        scratch: &mut Scratch,
        progress: &dyn Fn(u64),
    ) -> Result<Option<(usize, usize)>> {
        let mut nan = None;
        let mut y = Vec::new();
        for i in 0..ins.len() {
            ins.read(i, &mut y)?;
            layer_forward(w, &self.dims, &self.rope, &mut y, taps, scratch);
            if nan.is_none() {
                nan = y.iter().position(|v| v.is_nan()).map(|p| (i, p));
            }
            outs.write(i, &y)?;
            progress(1);
        }
        Ok(nan)
    }
}
