//! CUDA backend (WIP).
