//! Will vLLM load it? The shape, GPU-generation and memory rules of vLLM's compressed-tensors
//! kernels, checked for each quantized Linear at a tensor-parallel size.
