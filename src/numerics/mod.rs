//! Pure numerics, no IO: dtype conversions, FP8 E4M3 (per channel and per block), integer
//! (symmetric/asymmetric, grouped) and FP4 (NVFP4, MXFP4) weight quantization, and the
//! compressed-tensors packings.

pub mod convert;
pub mod fp4;
pub mod fp8;
pub mod fp8_block;
pub mod int;
pub mod pack;
mod rows;

pub use convert::{from_f32, round_to, to_f32, to_f32_into};
pub use fp4::{
    fp4_nibble, fp4_value, mx_scale, mx_scale_byte, nvfp4_global_scale, quantize_mxfp4_into,
    quantize_nvfp4_into, weight_absmax,
};
pub use fp8::{
    e4m3_to_f32, f32_to_e4m3, fp8_codes, fp8_scale, quantize_fp8_channel,
    quantize_fp8_channel_into, Fp8Rounding, E4M3_MAX,
};
pub use fp8_block::quantize_fp8_block_into;
pub use int::{group_qparams, quantize_group, quantize_int_into, IntParams};
