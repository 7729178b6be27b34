//! GPTQ (llm-compressor 0.14 `GPTQModifier`): the Hessian of a Linear's inputs, accumulated
//! over calibration samples, and the column-by-column quantization that compensates each
//! column's rounding error in the columns not yet quantized.
