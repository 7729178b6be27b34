//! llm-compressor's `QuantizationModifier` with static activation scales: scheme `FP8`
//! (FP8 E4M3 weights with one per-tensor scale, `memoryless_minmax`; FP8 inputs with one
//! static per-tensor `input_scale`, `static_minmax`) and `kv_cache_scheme` FP8 per tensor
//! (`k_scale` / `v_scale` on `self_attn`, from the `minmax` moving average of the key states
//! after RoPE and of the value states, one observation per sample).

use super::forward::{LayerWeights, Proj, Taps};
use super::observer::{fp8_scale, MovingMinMax, StaticMinMax};
use super::pipeline::Calibrator;
use super::LayerTensor;
use crate::checkpoint::DType;
use crate::numerics::{self, Fp8Rounding};
use crate::{Error, Result};

/// The hooks of one layer.
#[derive(Default)]
struct Observers {
    inputs: [Option<StaticMinMax>; 7],
    k: Option<MovingMinMax>,
    v: Option<MovingMinMax>,
}

impl Taps for Observers {
    fn linear_input(&mut self, proj: Proj, x: &[f32], _width: usize) {
        if let Some(o) = &mut self.inputs[proj as usize] {
            o.observe(x);
        }
    }

    fn key(&mut self, k: &[f32]) {
        if let Some(o) = &mut self.k {
            o.observe(k);
        }
    }

    fn value(&mut self, v: &[f32]) {
        if let Some(o) = &mut self.v {
            o.observe(v);
        }
    }
}

/// Static FP8 for the Linears marked in `targets` (indexed like [`Proj::ALL`]) and, with
/// `kv_cache`, FP8 K/V-cache scales; each layer's tensors go to `sink` when final.
pub struct StaticFp8<'s> {
    targets: [bool; 7],
    kv_cache: bool,
    obs: Observers,
    sink: &'s mut dyn FnMut(LayerTensor) -> Result<()>,
}

impl<'s> StaticFp8<'s> {
    pub fn new(
        targets: [bool; 7],
        kv_cache: bool,
        sink: &'s mut dyn FnMut(LayerTensor) -> Result<()>,
    ) -> Self {
        StaticFp8 {
            targets,
            kv_cache,
            obs: Observers::default(),
            sink,
        }
    }
}

impl Calibrator for StaticFp8<'_> {
    fn begin_layer(&mut self, _layer: usize, _w: &LayerWeights) -> Result<&mut dyn Taps> {
        let mut obs = Observers::default();
        for p in Proj::ALL {
            if self.targets[p as usize] {
                obs.inputs[p as usize] = Some(StaticMinMax::default());
            }
        }
        if self.kv_cache {
            obs.k = Some(MovingMinMax::default());
            obs.v = Some(MovingMinMax::default());
        }
        self.obs = obs;
        Ok(&mut self.obs)
    }

    fn end_layer(&mut self, layer: usize, w: &mut LayerWeights) -> Result<bool> {
        let prefix = format!("model.layers.{layer}");
        for p in Proj::ALL {
            let Some(o) = self.obs.inputs[p as usize] else {
                continue;
            };
            let module = format!("{prefix}.{}", p.path());
            let range = observed(o.range(), &module)?;
            (self.sink)(scalar(format!("{module}.input_scale"), fp8_scale(range)))?;
            for t in fp8_tensor_weight(&module, w.linear(p), w.shapes[p as usize])? {
                (self.sink)(t)?;
            }
        }
        let attn = format!("{prefix}.self_attn");
        if let (Some(k), Some(v)) = (self.obs.k, self.obs.v) {
            let (k, v) = (observed(k.range(), &attn)?, observed(v.range(), &attn)?);
            (self.sink)(scalar(format!("{attn}.k_scale"), fp8_scale(k)))?;
            (self.sink)(scalar(format!("{attn}.v_scale"), fp8_scale(v)))?;
        }
        // Quantization is disabled while llm-compressor calibrates: the original weights
        // propagate.
        Ok(false)
    }
}

fn observed(range: Option<(f32, f32)>, module: &str) -> Result<(f32, f32)> {
    match range {
        // An infinite range gives an infinite scale, as in llm-compressor.
        Some((lo, hi)) if !lo.is_nan() && !hi.is_nan() => Ok((lo, hi)),
        Some(_) => Err(Error::Calibration(format!(
            "{module}: the observed activations hold NaN"
        ))),
        None => Err(Error::Calibration(format!(
            "{module}: no calibration activations reached it"
        ))),
    }
}

/// A one-element BF16 tensor (compressed-tensors stores per-tensor scales as shape `[1]`).
fn scalar(name: String, v: f32) -> LayerTensor {
    LayerTensor {
        name,
        dtype: DType::BF16,
        shape: vec![1],
        data: bf16_bytes(&[v]),
    }
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    // Every value is already a BF16 value: its top 16 bits are exact.
    v.iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect()
}

/// `weight` (F8_E4M3) and `weight_scale` of a Linear with one per-tensor scale
/// (`memoryless_minmax` over the whole weight).
fn fp8_tensor_weight(module: &str, w: &[f32], shape: (usize, usize)) -> Result<[LayerTensor; 2]> {
    let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(Error::Quantize(format!(
            "{module}.weight contains NaN or Inf; cannot quantize"
        )));
    }
    let s = fp8_scale((lo, hi));
    let raw = bf16_bytes(w);
    let mut codes = vec![0u8; w.len()];
    numerics::fp8_codes(DType::BF16, &raw, s, Fp8Rounding::Eager, &mut codes);
    Ok([
        LayerTensor {
            name: format!("{module}.weight"),
            dtype: DType::F8_E4M3,
            shape: vec![shape.0, shape.1],
            data: codes,
        },
        scalar(format!("{module}.weight_scale"), s),
    ])
}
