//! The tensors of calibrated outputs beyond the weights: static activation scales
//! (`{module}.input_scale`) and FP8 KV-cache scales (`self_attn.k_scale` / `v_scale`), and how
//! vLLM combines the scales of the modules it fuses.
//!
//! vLLM runs a Llama's q/k/v projections as one `qkv_proj` and gate/up as one `gate_up_proj`,
//! and a fused module has one activation scale and (for per-tensor FP8 weights) one weight
//! scale. `process_weights_after_loading` of `CompressedTensorsW8A8Fp8` (and of
//! `CompressedTensorsW8A8Int8` for static int8 inputs) takes the **max** of the shards' input
//! scales; `requantize_with_max_scale` (`process_fp8_weight_tensor_strategy`) takes the max of
//! the weight scales and requantizes every shard to it:
//!
//! ```text
//! dq     = f16(e4m3(q) · s_i)                       per_tensor_dequantize: an f16 tensor
//! q'     = e4m3_rne(clamp(dq · (1 / s_max), ±448))  scaled_fp8_quant with a static scale
//! ```
//!
//! [`share_fused_scales`] does the same on the loaded modules, so the runtime computes what
//! vLLM computes. llm-compressor observes q/k/v (and gate/up) on the same input, so their
//! input scales are normally equal already; their weight scales are not.

use super::{Expect, Kind, Linear, LinearWeight};
use crate::numerics::{e4m3_to_f32, f32_to_e4m3, E4M3_MAX};

/// One scalar scale tensor (`[1]` as llm-compressor writes it, or `[1, 1]`).
fn scalar(name: String) -> Expect {
    Expect {
        name,
        shape: vec![1, 1],
        kind: Kind::Scale,
    }
}

/// `{module}.input_scale`, for a Linear with static input activations.
pub(super) fn input_scale_expect(module: &str) -> Expect {
    scalar(format!("{module}.input_scale"))
}

/// `{attn}.k_scale` and `{attn}.v_scale` for an FP8 KV cache (`attn` = `model.layers.N.self_attn`).
pub(super) fn kv_scale_expects(attn: &str) -> [Expect; 2] {
    [
        scalar(format!("{attn}.k_scale")),
        scalar(format!("{attn}.v_scale")),
    ]
}

/// Gives the modules vLLM fuses (`qkv` or `gate_up`) one input scale, the max of theirs, and,
/// when `per_tensor_fp8` (every shard FP8 with one weight scale), one weight scale, the max of
/// theirs, requantizing each shard's codes to it as vLLM does (see the module comment).
pub(super) fn share_fused_scales(shards: &mut [&mut Linear], per_tensor_fp8: bool) {
    let inputs: Vec<f32> = shards.iter().filter_map(|l| l.input_scale).collect();
    if inputs.len() == shards.len() {
        let max = inputs.iter().copied().fold(f32::MIN, f32::max);
        for l in shards.iter_mut() {
            l.input_scale = Some(max);
        }
    }
    if !per_tensor_fp8 {
        return;
    }
    let scale = |l: &Linear| match &l.weight {
        LinearWeight::Fp8 { scales, .. } => scales.first().copied(),
        _ => None,
    };
    let Some(max) = shards
        .iter()
        .map(|l| scale(l))
        .collect::<Option<Vec<f32>>>()
        .map(|s| s.into_iter().fold(f32::MIN, f32::max))
    else {
        return;
    };
    for l in shards.iter_mut() {
        if let LinearWeight::Fp8 { codes, scales } = &mut l.weight {
            if scales[0] != max {
                requantize(codes, scales[0], max);
                scales.fill(max);
            }
        }
    }
}

/// FP8 codes of scale `from` re-expressed with scale `to` (≥ `from`), as vLLM's
/// `requantize_with_max_scale`.
pub fn requantize(codes: &mut [u8], from: f32, to: f32) {
    let inv = 1.0 / to;
    for c in codes.iter_mut() {
        let dq = half::f16::from_f32(e4m3_to_f32(*c) * from).to_f32();
        *c = f32_to_e4m3((dq * inv).clamp(-E4M3_MAX, E4M3_MAX));
    }
}

/// What an FP8 KV cache holds for `x` with scale `s`: `e4m3(sat(x / s)) · s` — vLLM's
/// `reshape_and_cache_flash` stores `__nv_cvt_float_to_fp8(x / scale, __NV_SATFINITE)`, and its
/// attention reads the code back times the scale.
pub fn fp8_kv_round_trip(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v = e4m3_to_f32(f32_to_e4m3((*v / s).clamp(-E4M3_MAX, E4M3_MAX))) * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requantizing to the same scale keeps every finite code; to twice the scale halves the
    /// value (exact for the normal codes away from the subnormal range).
    #[test]
    fn requantize_to_a_larger_scale() {
        let all: Vec<u8> = (0..=255u8).filter(|c| c & 0x7F != 0x7F).collect();
        let mut same = all.clone();
        requantize(&mut same, 0.5, 0.5);
        assert_eq!(same, all);
        let mut half = all.clone();
        requantize(&mut half, 0.5, 1.0);
        for (&a, &b) in all.iter().zip(&half) {
            let (x, y) = (e4m3_to_f32(a), e4m3_to_f32(b));
            if x.abs() >= 1.0 / 32.0 {
                assert_eq!(y, x / 2.0, "code {a:#x}");
            }
        }
    }

    #[test]
    fn kv_round_trip_saturates() {
        let mut x = [1000.0f32, -1000.0, 0.3, 0.0];
        fp8_kv_round_trip(&mut x, 0.5);
        assert_eq!(x, [224.0, -224.0, 0.3125, 0.0]);
    }
}
