//! Checkpoints on disk: [`DType`], the mmap [`Checkpoint`] reader with validation, and the
//! streaming safetensors writer (shard planning, header, index).

pub mod dtype;
mod header;
pub mod input;
pub mod reader;
pub mod writer;

pub use dtype::DType;
pub use reader::{Checkpoint, TensorInfo};
pub use writer::{index_json, plan_shards, OutTensor, ShardPlan, ShardWriter};
pub mod hub;
