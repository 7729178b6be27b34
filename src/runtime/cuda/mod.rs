//! The CUDA backend (feature `cuda`): FP8 W8A8 inference with vLLM's semantics on Hopper
//! (sm_90a) and Ada (sm_89).
//!
//! Everything CUDA is loaded at run time: the driver through cudarc (`dynamic-loading`),
//! NVRTC and cuBLASLt by path ([`libs`]); the crate builds and its tests pass on machines
//! without a toolkit or a GPU. Kernels (`kernels/*.cu`) are embedded and compiled by NVRTC
//! for the GPU's exact architecture, cached on disk ([`kernels`]).

pub mod backend;
pub mod cublaslt;
pub mod device_weights;
pub mod emu;
pub mod emu_cublaslt;
pub mod gemm;
pub mod gpu;
pub mod graph;
pub mod grouped;
pub mod kernels;
pub mod libs;
pub mod model;
pub mod nvrtc;
pub mod ops;

pub mod tune;
pub mod upload;
pub mod variant;

pub use model::{load_cuda, CudaModel, CudaOptions};

/// For `--device auto`: the GPU to run on, or — as a one-line reason to print before falling
/// back to the CPU — why not (no driver, no device, compute capability below 8.9). Never
/// panics, also on machines without any CUDA library.
pub fn auto_device(ordinal: usize) -> std::result::Result<gpu::DeviceInfo, String> {
    gpu::probe(ordinal).map_err(|e| format!("using the CPU: {e}"))
}
