//! Streaming safetensors output, byte-identical to what transformers `save_pretrained` writes
//! through Python safetensors 0.8.
//!
//! Everything about a shard is known before any tensor is computed (names, dtypes, shapes), so
//! the header and every tensor's offset are computed up front ([`safetensors_header`]); the
//! [`ShardWriter`] then writes each tensor at its offset (`pwrite`) in any order, from any
//! thread, never holding more than the caller's buffer: memory does not grow with model size.

use super::dtype::DType;
use crate::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One tensor of the output, as the caller will produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Data size in bytes.
    pub fn nbytes(&self) -> u64 {
        self.numel() * self.dtype.size() as u64
    }
}

/// One output file and its tensors, in the caller's (state-dict) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub file_name: String,
    pub tensors: Vec<OutTensor>,
}

impl ShardPlan {
    /// Total tensor data bytes in this shard.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(OutTensor::nbytes).sum()
    }
}

/// Splits tensors (in state-dict order) into shards exactly like huggingface_hub's
/// `split_state_dict_into_shards_factory` (used by transformers `save_pretrained`): a tensor
/// joins the current shard unless that would exceed `max_shard_bytes`, which closes the shard
/// first; a tensor larger than the limit gets a shard of its own, appended right away (so it
/// lands *before* the still-open shard). One shard is `model.safetensors`, more are
/// `model-00001-of-0000N.safetensors`. Tensor sizes are `numel * itemsize`.
pub fn plan_shards(tensors: &[OutTensor], max_shard_bytes: u64) -> Vec<ShardPlan> {
    let mut shards: Vec<Vec<OutTensor>> = Vec::new();
    let mut current: Vec<OutTensor> = Vec::new();
    let mut current_size = 0u64;
    for t in tensors {
        let size = t.nbytes();
        if size > max_shard_bytes {
            shards.push(vec![t.clone()]);
            continue;
        }
        if current_size + size > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(t.clone());
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    let n = shards.len();
    shards
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| ShardPlan {
            file_name: shard_file_name(i, n),
            tensors,
        })
        .collect()
}

/// `model.safetensors` for a single shard, else `model-{i+1:05}-of-{n:05}.safetensors`.
pub fn shard_file_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// A safetensors header laid out for a set of tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The JSON text padded with spaces to a multiple of 8 (without the 8-byte length prefix).
    pub json: Vec<u8>,
    /// For each tensor name: absolute byte range in the file.
    pub offsets: HashMap<String, (u64, u64)>,
    /// Tensor names in file order.
    pub order: Vec<String>,
    /// Size of the whole file.
    pub file_size: u64,
}

/// The header Python safetensors 0.8 writes for these tensors (with transformers'
/// `{"format":"pt"}` metadata): tensors sorted by dtype rank descending, then name bytewise;
/// compact JSON; contiguous data offsets; spaces up to a multiple of 8 bytes.
pub fn safetensors_header(tensors: &[OutTensor]) -> Result<Header> {
    let mut sorted: Vec<&OutTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(&b.name)));
    for w in sorted.windows(2) {
        if w[0].name == w[1].name {
            return Err(Error::Output(format!(
                "tensor {} is listed twice",
                w[0].name
            )));
        }
    }
    let mut json = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut ranges = Vec::with_capacity(sorted.len());
    let mut offset = 0u64;
    for t in &sorted {
        let end = offset + t.nbytes();
        let name = serde_json::to_string(&t.name)
            .map_err(|e| Error::Output(format!("tensor name {}: {e}", t.name)))?;
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        json.push_str(&format!(
            ",{name}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            t.dtype.name(),
            shape.join(",")
        ));
        ranges.push((t.name.clone(), offset, end));
        offset = end;
    }
    json.push('}');
    let mut json = json.into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let data_start = 8 + json.len() as u64;
    Ok(Header {
        offsets: ranges
            .iter()
            .map(|(n, s, e)| (n.clone(), (data_start + s, data_start + e)))
            .collect(),
        order: ranges.into_iter().map(|(n, _, _)| n).collect(),
        file_size: data_start + offset,
        json,
    })
}

/// `model.safetensors.index.json` as transformers 5 writes it for a sharded save:
/// `json.dumps({"metadata": {"total_parameters": P, "total_size": S}, "weight_map": {...}},
/// indent=2, sort_keys=True) + "\n"`. `total_size` is the sum of tensor bytes; `total_parameters`
/// is `model.num_parameters()`, which for a saved (compressed) model is the element count of
/// all written tensors. Only written when there is more than one shard.
pub fn index_json(shards: &[ShardPlan]) -> String {
    let params = shards
        .iter()
        .flat_map(|s| &s.tensors)
        .map(OutTensor::numel)
        .sum();
    index_json_with(shards, params)
}

/// [`index_json`] with an explicit `total_parameters`.
pub fn index_json_with(shards: &[ShardPlan], total_parameters: u64) -> String {
    let total_size: u64 = shards.iter().map(ShardPlan::data_bytes).sum();
    let weight_map: serde_json::Map<String, serde_json::Value> = shards
        .iter()
        .flat_map(|s| {
            s.tensors
                .iter()
                .map(|t| (t.name.clone(), s.file_name.clone().into()))
        })
        .collect();
    let index = serde_json::json!({
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": weight_map,
    });
    crate::format::pyjson::dumps(&index, true) + "\n"
}

/// Writes one shard. The header JSON goes in at creation; tensors are written at their
/// precomputed offsets in any order (`&self`: several threads may write at once); `finish`
/// checks that every byte was written, then writes the 8-byte header length and fsyncs. Until
/// then the length prefix is zero, so an interrupted file is never mistaken for a valid one.
#[derive(Debug)]
pub struct ShardWriter {
    path: PathBuf,
    file: File,
    header: Header,
    written: HashMap<String, AtomicU64>,
}

impl ShardWriter {
    /// Creates (or truncates) `path`, sized to the final file, and writes the header JSON.
    pub fn create(path: &Path, plan: &ShardPlan) -> Result<ShardWriter> {
        let header = safetensors_header(&plan.tensors)?;
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        file.set_len(header.file_size)
            .map_err(|e| Error::io(path, e))?;
        file.write_all_at(&header.json, 8)
            .map_err(|e| Error::io(path, e))?;
        let written = header
            .order
            .iter()
            .map(|n| (n.clone(), AtomicU64::new(0)))
            .collect();
        Ok(ShardWriter {
            path: path.to_path_buf(),
            file,
            header,
            written,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header layout (absolute offsets of every tensor).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Writes the whole data of tensor `name` (little-endian bytes, exact length).
    pub fn write_tensor(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let (start, end) = self.range(name)?;
        if bytes.len() as u64 != end - start {
            return Err(Error::Output(format!(
                "{}: tensor {name} needs {} bytes, got {}",
                self.path.display(),
                end - start,
                bytes.len()
            )));
        }
        self.write_at(name, 0, bytes)
    }

    /// Writes `bytes` at byte `offset` inside tensor `name`'s data (for tensors produced in
    /// pieces). Each byte must be written exactly once.
    pub fn write_at(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let (start, end) = self.range(name)?;
        let len = bytes.len() as u64;
        if offset + len > end - start {
            return Err(Error::Output(format!(
                "{}: write of {len} bytes at {offset} overruns tensor {name} ({} bytes)",
                self.path.display(),
                end - start
            )));
        }
        let before = self.written[name].fetch_add(len, Ordering::Relaxed);
        if before + len > end - start {
            return Err(Error::Output(format!(
                "{}: tensor {name} written more than once",
                self.path.display()
            )));
        }
        self.file
            .write_all_at(bytes, start + offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Checks every tensor is complete, writes the header length, fsyncs.
    pub fn finish(self) -> Result<()> {
        for name in &self.header.order {
            let (s, e) = self.header.offsets[name];
            if self.written[name].load(Ordering::Relaxed) != e - s {
                return Err(Error::Output(format!(
                    "{}: tensor {name} was not (completely) written",
                    self.path.display()
                )));
            }
        }
        let n = self.header.json.len() as u64;
        let io = |e| Error::io(&self.path, e);
        self.file.write_all_at(&n.to_le_bytes(), 0).map_err(io)?;
        self.file.sync_all().map_err(io)
    }

    fn range(&self, name: &str) -> Result<(u64, u64)> {
        self.header.offsets.get(name).copied().ok_or_else(|| {
            Error::Output(format!(
                "{}: tensor {name} is not in this shard",
                self.path.display()
            ))
        })
    }
}
