//! Model downloads from a Hugging Face hub (a local mock of it).

mod dataset;
mod download;
mod errors;
pub(crate) mod mock;
