//! Every preset against llm-compressor's fixture outputs: numerics, files, recipes.

mod numerics;
mod output;
mod recipes;
