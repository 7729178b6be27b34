//! Pure numerics, no IO: dtype conversions and FP8 E4M3 quantization.

pub mod convert;
pub mod fp8;

pub use convert::{from_f32, round_to, to_f32, to_f32_into};
pub use fp8::{
    e4m3_to_f32, f32_to_e4m3, fp8_scale, quantize_fp8_channel, quantize_fp8_channel_into,
    Fp8Rounding, E4M3_MAX,
};
