//! The runtime: loads a checkpoint from its on-disk format (BF16/F16/F32 or compressed-tensors
//! FP8_DYNAMIC) and runs it. Backends sit behind the small [`Backend`] trait.

pub mod chat;
pub mod config;
pub mod cpu;
pub mod generate;
pub mod sampler;
pub mod tokenizer;
pub mod verify;
pub mod weights;

use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// A loaded model that can run forward passes with a KV cache: the one interface through
/// which `verify`, `generate` and `bench` drive every backend (CPU reference, CUDA).
///
/// Contract shared by every backend:
/// * `forward_view(tokens, pos, all_logits)` runs `tokens` at positions
///   `pos .. pos + tokens.len()`, appending their keys/values to the cache (which must already
///   hold positions `0 .. pos`), and returns a view of the backend's own logits buffer,
///   row-major: `[tokens.len(), vocab]` when `all_logits`, else only the last position's
///   `[vocab]`. A decode loop thus allocates nothing per token.
/// * `reset()` empties the cache.
pub trait Backend: Send {
    fn forward_view(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<&[f32]>;
    fn reset(&mut self);
    fn vocab_size(&self) -> usize;
    /// A short human name, e.g. "cpu (8 threads)".
    fn describe(&self) -> String;
    /// Weight bytes one decode step reads (the memory-bandwidth roofline of `bench`).
    fn weight_bytes_per_token(&self) -> u64;

    /// Lets long forward passes (many rows at once) trade the bit-for-bit independence of
    /// each row's arithmetic from the number of rows run together for speed: the CPU backend
    /// then runs dense Linear layers of [`cpu::prefill::GEMM_MIN_ROWS`] rows or more through
    /// a packed GEMM (the same f32 products, summed in another order). Off by default;
    /// `qforge eval` turns it on (its scores are compared within 1e-3 nats, not bit for bit).
    fn set_fast_prefill(&mut self, _on: bool) {}

    /// [`Backend::forward_view`] copied into a new vector.
    fn forward(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        Ok(self.forward_view(tokens, pos, all_logits)?.to_vec())
    }

    /// The most candidates [`Backend::forward_top`] returns; 0 (the default) when the backend
    /// does not select them itself.
    fn top_capacity(&self) -> usize {
        0
    }

    /// Runs `tokens` like `forward_view(tokens, pos, false)` but returns only the `k` largest
    /// logits of the last row with their ids (`k <= top_capacity()`), best first, in the
    /// order of [`top_candidates`](sampler::top_candidates).
    fn forward_top(&mut self, _tokens: &[u32], _pos: usize, k: usize) -> Result<&[(f32, u32)]> {
        Err(Error::Runtime(format!(
            "{} does not select top-{k} candidates",
            self.describe()
        )))
    }

    /// Runs `tokens` and returns the greedy next token. The default runs the prompt in
    /// chunks of [`PREFILL_ROWS`] (bounding the `[rows, vocab]` logits buffer) and takes the
    /// argmax of the last row.
    fn next_token(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        let (head, last) = match tokens.len() {
            0 => return Err(Error::Runtime("forward: no tokens".into())),
            n => tokens.split_at((n - 1) / PREFILL_ROWS * PREFILL_ROWS),
        };
        let mut at = pos;
        for chunk in head.chunks(PREFILL_ROWS) {
            self.forward_view(chunk, at, false)?;
            at += chunk.len();
        }
        Ok(sampler::argmax(self.forward_view(last, at, false)?))
    }
}

/// Prompt rows per forward pass of [`Backend::next_token`]'s default.
pub const PREFILL_ROWS: usize = 128;

#[cfg(feature = "cuda")]
pub mod cuda;

/// Where a model runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when a capable GPU is present (compute capability ≥ 8.9), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// An NVIDIA GPU with FP8 (compute capability ≥ 8.9: Ada or Hopper).
    // Developer switches, kept out of `--help` (docs/ describes them): QFORGE_CUDA_EMULATE=1
    // runs the CUDA kernels in the emulator on the CPU (tests); QFORGE_CUDA_GRAPHS=0 launches
    // decode steps kernel by kernel instead of replaying a CUDA graph.
    Cuda,
}

/// The concrete device `device` means on this machine: `auto` is CUDA when this build has the
/// CUDA backend and a driver with an FP8-capable GPU (compute capability ≥ 8.9) is present,
/// else the CPU (saying why on stderr); `cuda` is an error when no such GPU is usable.
pub fn resolve_device(device: Device) -> Result<Device> {
    match device {
        Device::Cpu => Ok(Device::Cpu),
        Device::Cuda => cuda_probe()
            .map(|_| Device::Cuda)
            .map_err(Error::Unsupported),
        Device::Auto => match cuda_probe() {
            Ok(()) => Ok(Device::Cuda),
            Err(reason) => {
                eprintln!(
                    "qforge: --device auto: using the CPU ({})",
                    auto_reason(&reason)
                );
                Ok(Device::Cpu)
            }
        },
    }
}

/// Why `auto` chose the CPU, for a user who did not ask for a GPU: the facts without the
/// advice (installing a driver is advice for an explicit `--device cuda`).
fn auto_reason(probe: &str) -> &str {
    if probe.starts_with("no CUDA driver") || probe.starts_with("no CUDA device") {
        return "no NVIDIA GPU found";
    }
    probe.split(": install").next().unwrap_or(probe)
}

#[cfg(not(feature = "cuda"))]
fn cuda_probe() -> std::result::Result<(), String> {
    Err("this qforge was built without the CUDA backend (cargo feature `cuda`)".into())
}

#[cfg(feature = "cuda")]
fn cuda_probe() -> std::result::Result<(), String> {
    crate::runtime::cuda::auto_device(0)
        .map(|_| ())
        .map_err(|e| e.trim_start_matches("using the CPU: ").to_string())
}

/// Loads the checkpoint in `dir` on `device` (see [`resolve_device`]), with a KV cache for
/// `max_seq` positions (`None`: the backend's default).
pub fn load(dir: &Path, device: Device, max_seq: Option<usize>) -> Result<Box<dyn Backend>> {
    match resolve_device(device)? {
        Device::Cuda => {
            cpu_only_features(dir)?;
            load_cuda(dir, max_seq)
        }
        Device::Auto | Device::Cpu => Ok(Box::new(cpu::load_cpu_with(
            dir,
            &cpu::CpuOptions { max_seq },
        )?)),
    }
}

/// Static input scales and an FP8 KV cache (calibrated outputs) run on the CPU backend only:
/// the CUDA backend would quantize per token and keep the cache in 16 bits, silently another
/// computation than vLLM's.
fn cpu_only_features(dir: &Path) -> Result<()> {
    let cfg = config::ModelConfig::load(dir)?;
    let what = match (cfg.quantization.has_static_inputs(), cfg.kv_cache_fp8) {
        (false, false) => return Ok(()),
        (true, false) => "static input scales (input_scale)",
        (false, true) => "an FP8 KV cache (kv_cache_scheme)",
        (true, true) => "static input scales and an FP8 KV cache",
    };
    Err(Error::Unsupported(format!(
        "{}: {what} run on the CPU backend only; pass --device cpu",
        dir.display()
    )))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(_dir: &Path, _max_seq: Option<usize>) -> Result<Box<dyn Backend>> {
    Err(Error::Unsupported(cuda_probe().unwrap_err()))
}

#[cfg(feature = "cuda")]
fn load_cuda(dir: &Path, max_seq: Option<usize>) -> Result<Box<dyn Backend>> {
    use crate::runtime::cuda::{load_cuda, CudaOptions};
    let opts = CudaOptions {
        max_seq,
        ..CudaOptions::default()
    };
    Ok(Box::new(load_cuda(dir, &opts)?))
}

/// The checks every backend makes before a forward pass: tokens given, `pos` within the cached
/// prefix, the KV cache long enough, every id inside the vocabulary.
pub fn check_forward_inputs(
    tokens: &[u32],
    pos: usize,
    cached: usize,
    max_seq: usize,
    vocab: usize,
) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::Runtime("forward: no tokens".into()));
    }
    if pos > cached {
        return Err(Error::Runtime(format!(
            "forward: position {pos} but the KV cache holds only {cached} positions"
        )));
    }
    if pos + tokens.len() > max_seq {
        return Err(Error::Runtime(format!(
            "forward: {} positions exceed the KV cache length {max_seq} (max_seq)",
            pos + tokens.len()
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Runtime(format!(
            "forward: token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}
