//! `quantize` end to end: the output, bad input, the FP8 quantizer, the bundled model.

mod default_model;
mod errors;
mod fp8;
mod output;
mod refusals;
