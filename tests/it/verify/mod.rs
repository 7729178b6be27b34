//! `verify`: the library on the tiny fixtures and SmolLM2, and the binary.

mod calibrated;
mod cli;
mod config_keys;
mod smollm2;
mod tiny;
