//! The CPU runtime: config, forward pass, linears, integrity checks, presets, chat, sampling,
//! tokenizer, and SmolLM2 end to end.

mod calibrated;
mod chat_sampler;
mod chat_templates;
mod config;
mod forward;
mod integrity;
mod linear;
mod presets;
mod presets_integrity;
mod presets_smollm2;
mod smollm2;
mod tokenizer_smollm2;
mod w8a8_int8;
