//! The CUDA backend (feature `cuda`): FP8 W8A8 inference with vLLM's semantics on Hopper
//! (sm_90a) and Ada (sm_89).
//!
//! Everything CUDA is loaded at run time: the driver through cudarc (`dynamic-loading`),
//! NVRTC and cuBLASLt by path ([`libs`]); the crate builds and its tests pass on machines
//! without a toolkit or a GPU. Kernels (`kernels/*.cu`) are embedded and compiled by NVRTC
//! for the GPU's exact architecture, cached on disk ([`kernels`]).

pub mod cublaslt;
pub mod dweights;
pub mod forward;
pub mod gpu;
pub mod kernels;
pub mod libs;
pub mod model;
pub mod nvrtc;
pub mod ops;
pub mod randmodel;
pub mod report;
pub mod selftest;
pub mod bench;
pub mod cli;
