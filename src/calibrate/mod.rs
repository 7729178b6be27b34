//! Calibrated quantization (llm-compressor's GPTQ, static activation scales, KV-cache
//! scales, SmoothQuant, AWQ): a sequential pipeline that runs calibration samples through
//! the model one decoder layer at a time and quantizes each layer's Linears from what it saw.

pub mod gptq;
