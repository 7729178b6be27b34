//! Recipes (parsing, matching, presets) and the compressed-tensors format of the output.

mod fixtures;
mod format;
