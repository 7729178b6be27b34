//! The CUDA backend on the CUDA emulator (and a real GPU when there is one), the kernel
//! compile check with NVRTC (scripts/gpu_check.sh's tests are in tests/isolated).

mod attention;
mod emulator_cli;
mod fp8_block;
mod gemm;
mod gemv_sweep;
mod gemv_tune;
mod graphs;
mod grouped;
mod int8;
mod nvrtc;
mod rows;
mod runtime;
mod sampling;
