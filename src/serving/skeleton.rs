//! A checkpoint of a named shape (`make-model --shape`) with headers and no data: config.json
//! and safetensors files whose data area is a hole (sparse files, no disk blocks), so that a
//! quantize plan of a 70B model can be laid out and checked without writing 141 GB.

use crate::checkpoint::writer;
use crate::synthetic::{self, LlamaShape};
use crate::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Shards of at most this size, as `make-model` writes them.
const SHARD_BYTES: u64 = 20_000_000_000;

/// The shape called `name`, or an error listing the names.
pub fn named(name: &str) -> Result<LlamaShape> {
    synthetic::named_shape(name).ok_or_else(|| {
        Error::Unsupported(format!(
            "unknown shape {name}: use one of {}",
            synthetic::SHAPE_NAMES
        ))
    })
}

/// Writes the headers-only checkpoint of `shape` into the existing folder `dir`.
pub fn write(shape: &LlamaShape, dir: &Path) -> Result<()> {
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&shape.config())
        .map_err(|e| Error::Output(format!("cannot encode config.json: {e}")))?;
    std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;
    for shard in writer::plan_shards(&shape.tensors(), SHARD_BYTES) {
        let header = writer::safetensors_header(&shard.tensors)?;
        let path = dir.join(&shard.file_name);
        let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(&(header.json.len() as u64).to_le_bytes())
            .and_then(|_| f.write_all(&header.json))
            .and_then(|_| f.set_len(header.file_size))
            .map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
