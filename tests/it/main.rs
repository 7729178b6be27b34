//! qforge's integration tests, in one test binary (one link instead of one per file).
//!
//! Layout: one module per area (a folder with a `mod.rs` listing its files, or one file),
//! one file per group of tests; a test's name is its module path, e.g.
//! `runtime::forward::tiny_llama3_fp8_matches_golden_logits`. Helpers live once, in
//! `support` (fixture paths, the qforge binary, the SmolLM2 folder, quantizing test models;
//! `support::runtime`, `support::verify` and `support::cuda` for those areas). A new area is
//! a new module file plus one `mod` line here; a new file in an area is one `mod` line in the
//! area's `mod.rs`.
//!
//! Skips: a test that needs something the machine may lack (the SmolLM2 model, a small
//! filesystem, NVRTC, the CUDA emulator or a driver, python3) carries
//! `#[requires(smollm2)]` (etc., see tests/requires) before `#[test]`. When the requirement
//! was missing as the tests compiled, the test is `#[ignore]`d with the reason, so
//! `cargo test` lists it as ignored, never as passed; `cargo test -- --ignored` runs them.
//! Where CI sets `QFORGE_REQUIRE_NVRTC=1` / `QFORGE_REQUIRE_EMU=1` the requirement counts as
//! met, so the test runs and fails when the thing is missing. Never skip by returning early.
//!
//! Tests that measure the whole process (a counting global allocator, peak RSS) cannot share
//! it with the others: they are in the `isolated` binary (tests/isolated).

mod support;

mod architecture;
mod awq;
mod bench_cpu;
mod calib_recipe;
mod calibrate;
mod calibrate_plan;
mod checkpoint;
mod cli;
#[cfg(feature = "cuda")]
mod cuda;
mod dataset;
mod eval;
mod fifo_inputs;
mod fuzz;
mod gptq;
mod hub;
mod presets;
mod quantize;
mod readme;
mod recipe;
mod runtime;
mod serving;
mod smooth;
mod verify;
