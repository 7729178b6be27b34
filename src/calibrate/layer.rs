//! What happens to one decoder layer between its calibration pass and its propagation
//! pass, as llm-compressor 0.14 does it at `sequential_epoch_end`:
//!
//! - static input scales (`static_minmax` over every sample's Linear input) and K/V-cache
//!   scales (`minmax`, a moving average over the samples of the key states after RoPE and of
//!   the value states) become `input_scale`, `k_scale`, `v_scale`;
//! - with GPTQ, each Linear's Hessian (from the same pass, so o_proj and down_proj see
//!   activations of the original q/k/v/gate/up weights) quantizes its weight, which is then
//!   replaced by its fake-quantized value so that the next layer sees the quantized outputs;
//! - without GPTQ, weights are rounded to nearest and the original weights propagate (the
//!   calibration runs under `DisableQuantization`).

use super::forward::{LayerWeights, Proj, Taps};
use super::gptq::{self, input_slot, GptqOptions, Hessian, INPUT_SLOTS};
use super::observer::{fp8_scale, MovingMinMax, StaticMinMax};
use super::outputs::LinearPlan;
use super::pipeline::Calibrator;
use super::smoothquant::{Norm, SmoothQuant};
use super::LayerTensor;
use crate::checkpoint::DType;
use crate::numerics::{self, Fp8Rounding};
use crate::recipe::{QuantType, Strategy};
use crate::{Error, Result};
use std::borrow::Cow;

/// The hooks of one layer.
#[derive(Default)]
struct Observers {
    inputs: [Option<StaticMinMax>; 7],
    k: Option<MovingMinMax>,
    v: Option<MovingMinMax>,
    /// One Hessian per distinct input ([`gptq::input_slot`]): q/k/v_proj's are equal, as
    /// are gate/up_proj's, so one is accumulated and read by each.
    hessians: [Option<Hessian>; INPUT_SLOTS],
    /// The slot each Linear's input is added to (only the first GPTQ target of a slot).
    feeds: [Option<usize>; 7],
    /// The last GPTQ target reading each slot: it takes the Hessian and drops it.
    last_reader: [Option<Proj>; INPUT_SLOTS],
    error: Option<Error>,
}

impl Taps for Observers {
    fn linear_input(&mut self, proj: Proj, x: &[f32], width: usize) {
        if let Some(o) = &mut self.inputs[proj as usize] {
            o.observe(x);
        }
        // NaN is refused there; Inf makes an infinite Hessian, on which GPTQ falls back to
        // round-to-nearest as llm-compressor does.
        let slot = self.feeds[proj as usize];
        if let Some(h) = slot.and_then(|s| self.hessians[s].as_mut()) {
            if let Err(e) = h.add_batch(x, x.len() / width.max(1)) {
                self.error.get_or_insert(e);
            }
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

/// The calibrator of a whole run: per layer, the plan of each of its seven Linears
/// (`None`: left as it is).
pub struct LayerCalibrator<'s> {
    pub plans: Vec<[Option<LinearPlan>; 7]>,
    pub kv_cache: bool,
    pub gptq: Option<GptqOptions>,
    /// SmoothQuant, already applied to the weights this calibrator is given (see
    /// [`super::smoothquant`]): the smoothed tensors to write.
    pub smooth: Option<SmoothQuant>,
    /// Messages for the user (GPTQ's round-to-nearest fallbacks).
    pub warnings: Vec<String>,
    obs: Observers,
    sink: &'s mut dyn FnMut(LayerTensor) -> Result<()>,
}

impl<'s> LayerCalibrator<'s> {
    pub fn new(
        plans: Vec<[Option<LinearPlan>; 7]>,
        kv_cache: bool,
        gptq: Option<GptqOptions>,
        sink: &'s mut dyn FnMut(LayerTensor) -> Result<()>,
    ) -> Self {
        LayerCalibrator {
            plans,
            kv_cache,
            gptq,
            smooth: None,
            warnings: Vec::new(),
            obs: Observers::default(),
            sink,
        }
    }
}

impl Calibrator for LayerCalibrator<'_> {
    fn begin_layer(&mut self, layer: usize, w: &LayerWeights) -> Result<&mut dyn Taps> {
        let mut obs = Observers::default();
        for (p, plan) in Proj::ALL.iter().zip(&self.plans[layer]) {
            let Some(plan) = plan else { continue };
            if plan.static_input {
                obs.inputs[*p as usize] = Some(StaticMinMax::default());
            }
            if self.gptq.is_some() {
                let slot = input_slot(*p);
                if obs.hessians[slot].is_none() {
                    obs.hessians[slot] = Some(Hessian::new(w.shapes[*p as usize].1));
                    obs.feeds[*p as usize] = Some(slot);
                }
                obs.last_reader[slot] = Some(*p);
            }
        }
        if self.kv_cache {
            obs.k = Some(MovingMinMax::default());
            obs.v = Some(MovingMinMax::default());
        }
        self.obs = obs;
        Ok(&mut self.obs)
    }

    /// GPTQ rewrites every Linear it quantizes ([`Self::quantize_linear`]).
    fn propagates(&self, layer: usize) -> bool {
        self.gptq.is_some() && self.plans[layer].iter().any(Option::is_some)
    }

    fn end_layer(&mut self, layer: usize, w: &mut LayerWeights) -> Result<bool> {
        if let Some(e) = self.obs.error.take() {
            return Err(Error::Calibration(format!("model.layers.{layer}: {e}")));
        }
        let prefix = format!("model.layers.{layer}");
        self.write_smoothed(layer, w)?;
        let mut changed = false;
        for p in Proj::ALL {
            let Some(plan) = self.plans[layer][p as usize].clone() else {
                continue;
            };
            let module = format!("{prefix}.{}", p.path());
            if let Some(o) = self.obs.inputs[p as usize] {
                let range = observed(o.range(), &module)?;
                (self.sink)(scalar(format!("{module}.input_scale"), fp8_scale(range)))?;
            }
            changed |= self.quantize_linear(&plan, &module, w)?;
        }
        let attn = format!("{prefix}.self_attn");
        if let (Some(k), Some(v)) = (self.obs.k, self.obs.v) {
            let (k, v) = (observed(k.range(), &attn)?, observed(v.range(), &attn)?);
            (self.sink)(scalar(format!("{attn}.k_scale"), fp8_scale(k)))?;
            (self.sink)(scalar(format!("{attn}.v_scale"), fp8_scale(v)))?;
        }
        Ok(changed)
    }
}

impl LayerCalibrator<'_> {
    /// Hands on a BF16-valued tensor as it is (a norm or Linear a transform rewrote).
    pub fn write_bf16(&mut self, name: String, shape: Vec<usize>, values: &[f32]) -> Result<()> {
        let mut t = bf16_tensor(name, values);
        t.shape = shape;
        (self.sink)(t)
    }

    /// Writes the layer's smoothed norms, and the smoothed balance Linears that are not
    /// quantized, as BF16.
    fn write_smoothed(&mut self, layer: usize, w: &LayerWeights) -> Result<()> {
        let Some(sq) = &self.smooth else {
            return Ok(());
        };
        let maps = sq.layers[layer].clone();
        for m in &maps {
            let (name, values) = match m.norm {
                Norm::Input => ("input_layernorm", &w.input_norm),
                Norm::Post => ("post_attention_layernorm", &w.post_norm),
            };
            let t = bf16_tensor(format!("model.layers.{layer}.{name}.weight"), values);
            (self.sink)(t)?;
            for &p in &m.balance {
                if self.plans[layer][p as usize].is_none() {
                    let name = format!("model.layers.{layer}.{}.weight", p.path());
                    let mut t = bf16_tensor(name, &w.linears[p as usize]);
                    t.shape = vec![w.shapes[p as usize].0, w.shapes[p as usize].1];
                    (self.sink)(t)?;
                }
            }
        }
        Ok(())
    }

    /// Quantizes one Linear, hands its tensors to the sink; true if its weight changed.
    fn quantize_linear(
        &mut self,
        plan: &LinearPlan,
        module: &str,
        w: &mut LayerWeights,
    ) -> Result<bool> {
        let p = plan.proj as usize;
        let (rows, cols) = w.shapes[p];
        let Some(options) = self.gptq else {
            let (codes, scales, zps) = round_to_nearest(plan, module, &w.linears[p], rows, cols)?;
            for t in plan.weight_tensors(module, rows, cols, &codes, &scales, &zps) {
                (self.sink)(t)?;
            }
            return Ok(false);
        };
        let slot = input_slot(plan.proj);
        // The last reader of a Hessian owns it, so that the solve can drop it early.
        let hessian = match self.obs.last_reader[slot] == Some(plan.proj) {
            true => self.obs.hessians[slot].take().map(Cow::Owned),
            false => self.obs.hessians[slot].as_ref().map(Cow::Borrowed),
        };
        let hessian = hessian
            .ok_or_else(|| Error::Calibration(format!("{module}: no Hessian was accumulated")))?;
        let mut options = options;
        options.actorder = gptq::actorder_enabled(plan.weights.actorder.as_deref())?;
        let r =
            gptq::quantize_weight_with(&w.linears[p], rows, cols, hessian, &options, &plan.weights)
                .map_err(|e| Error::Calibration(format!("{module}: {e}")))?;
        if r.rtn_fallback {
            self.warnings.push(format!(
                "{module}: the Hessian is not positive definite; the weight was rounded to \
                 nearest instead of GPTQ (as llm-compressor does)"
            ));
        }
        let zps: Vec<u8> = r.zero_points.iter().map(|&z| z as u8).collect();
        for t in plan.weight_tensors(module, rows, cols, &r.codes, &r.scales, &zps) {
            (self.sink)(t)?;
        }
        w.linears[p] = r
            .dequantized
            .iter()
            .map(|&b| f32::from_bits((b as u32) << 16))
            .collect();
        Ok(true)
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

/// A BF16 vector tensor of already-BF16 values.
fn bf16_tensor(name: String, v: &[f32]) -> LayerTensor {
    LayerTensor {
        name,
        dtype: DType::BF16,
        shape: vec![v.len()],
        data: bf16_bytes(v),
    }
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    // Every value is already a BF16 value: its top 16 bits are exact.
    v.iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect()
}

/// Round to nearest as a calibrating QuantizationModifier does it (the weights it is given,
/// after any smoothing): FP8 per tensor, or integer per channel or group as the data-free
/// path computes it (`numerics::quantize_int_into`). Returns the codes, the scales' BF16
/// bits and the zero points.
fn round_to_nearest(
    plan: &LinearPlan,
    module: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
) -> Result<(Vec<u8>, Vec<u16>, Vec<u8>)> {
    let a = &plan.weights;
    if a.kind != QuantType::Int {
        let (codes, scale) = fp8_round_to_nearest(plan, module, w)?;
        return Ok((codes, vec![scale], Vec::new()));
    }
    let group = match (a.strategy, a.group_size) {
        (Strategy::Group, Some(g)) if g > 0 => g as usize,
        (Strategy::Channel, _) => cols,
        _ => {
            return Err(Error::Unsupported(format!(
                "{module}: round-to-nearest {} integer weights in a calibrating \
                 QuantizationModifier are not supported yet",
                a.strategy.as_str()
            )))
        }
    };
    let p = numerics::int::IntParams {
        bits: a.num_bits,
        group,
        symmetric: a.symmetric,
    };
    let groups = cols / group;
    let (mut codes, mut scales, mut zps) = (
        vec![0u8; rows * cols],
        vec![0u8; rows * groups * 2],
        vec![0u8; rows * groups],
    );
    let name = format!("{module}.weight");
    let data = bf16_bytes(w);
    let (r, c) = (rows, cols);
    let e = Fp8Rounding::Eager;
    numerics::int::quantize_int_into(
        &name,
        DType::BF16,
        &data,
        r,
        c,
        p,
        e,
        &mut codes,
        &mut scales,
        &mut zps,
    )?;
    let scales = scales
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok((codes, scales, zps))
}

/// Round-to-nearest FP8 with one per-tensor scale (`memoryless_minmax` over the whole
/// weight): the E4M3 codes and the scale's BF16 bits. Other round-to-nearest schemes of a
/// calibrating `QuantizationModifier` are not supported yet.
fn fp8_round_to_nearest(plan: &LinearPlan, module: &str, w: &[f32]) -> Result<(Vec<u8>, u16)> {
    let a = &plan.weights;
    if !(a.kind == QuantType::Float && a.strategy == Strategy::Tensor) {
        return Err(Error::Unsupported(format!(
            "{module}: round-to-nearest {} weights in a calibrating QuantizationModifier are \
             not supported yet (FP8 per tensor is)",
            a.strategy.as_str()
        )));
    }
    let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(Error::Quantize(format!(
            "{module}.weight contains NaN or Inf; cannot quantize"
        )));
    }
    let s = fp8_scale((lo, hi));
    let mut codes = vec![0u8; w.len()];
    numerics::fp8_codes(
        DType::BF16,
        &bf16_bytes(w),
        s,
        Fp8Rounding::Eager,
        &mut codes,
    );
    Ok((codes, (s.to_bits() >> 16) as u16))
}
