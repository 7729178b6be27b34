//! Memory-mapped reader of a local Hugging Face model directory (config.json + safetensors).
//!
//! Every header is validated up front (by the `safetensors` crate, see [`super::header`]), so
//! later code can slice tensor data without checks; tensor names must also be unique across
//! shards. Input files must be regular files ([`super::input`]). Each failure is one line
//! naming the file and tensor.

use super::dtype::DType;
use super::{header, input};
use crate::{Error, Result};
use memmap2::Mmap;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where one tensor lives. `start..end` is the absolute byte range in `files()[file]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub file: usize,
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Byte length of the data.
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// An opened model directory: its config and all its tensors, mmapped.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// config.json parsed (keys in file order).
    pub config: Value,
    /// config.json verbatim.
    pub config_text: String,
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

fn bad(msg: String) -> Error {
    Error::Checkpoint(msg)
}

impl Checkpoint {
    /// Opens a local model directory: config.json, then model.safetensors.index.json if present
    /// (its weight_map names the shards) else every *.safetensors file (sorted by name); mmaps
    /// them and validates every header.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(bad(format!("{}: not a directory", dir.display())));
        }
        let (config, config_text) = read_config(dir)?;
        let files = shard_files(dir)?;
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            config_text,
            files: Vec::new(),
            maps: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        for path in files {
            ck.add_file(path)?;
        }
        ck.check_index(dir)?;
        Ok(ck)
    }

    /// All tensors, in file order then data offset order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's raw little-endian bytes, straight from the mmap.
    /// `t` must come from this checkpoint (panics otherwise).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.maps[t.file][t.start..t.end]
    }

    /// The safetensors files, in the order `TensorInfo::file` indexes them.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes() as u64).sum()
    }

    /// Tells the kernel the tensor's pages will not be needed soon, so a streaming pass does
    /// not keep the whole model resident. Purely advisory; errors are ignored.
    pub fn release(&self, t: &TensorInfo) {
        self.release_range(t, 0..t.nbytes());
    }

    /// [`Checkpoint::release`] for the bytes `range` of the tensor's data (for huge tensors
    /// processed in pieces).
    pub fn release_range(&self, t: &TensorInfo, range: std::ops::Range<usize>) {
        let end = (t.start + range.end).min(t.end);
        // madvise needs an aligned start; 64 KiB suits 4 KiB and 64 KiB pages alike. Pages
        // of a neighbouring tensor caught by the rounding are simply re-read if needed.
        let start = (t.start + range.start) / 65536 * 65536;
        if end <= start {
            return;
        }
        // SAFETY: the map is read-only and file-backed: dropped pages are re-read from the file
        // on the next access, so no data can be lost or changed.
        let _ = unsafe {
            self.maps[t.file].unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                end - start,
            )
        };
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file_idx = self.files.len();
        let map = map_file(&path)?;
        let infos = header::parse(&path, &map, file_idx)?;
        for t in infos {
            if let Some(&prev) = self.by_name.get(&t.name) {
                let other = &self.files[self.tensors[prev].file];
                return Err(bad(format!(
                    "{}: tensor {} is also in {}",
                    path.display(),
                    t.name,
                    other.display()
                )));
            }
            self.by_name.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        self.files.push(path);
        self.maps.push(map);
        Ok(())
    }

    /// With an index, every weight_map entry must be in the shard it names.
    fn check_index(&self, dir: &Path) -> Result<()> {
        let Some((path, map)) = read_index(dir)? else {
            return Ok(());
        };
        for (name, file) in map {
            let found = self.get(&name).map(|t| &self.files[t.file]);
            if found.and_then(|p| p.file_name()) != Some(std::ffi::OsStr::new(&file)) {
                return Err(bad(format!(
                    "{}: tensor {name} is not in {file}",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

fn read_config(dir: &Path) -> Result<(Value, String)> {
    let path = dir.join("config.json");
    let text = input::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad(format!(
            "{}: not found (is {} a Hugging Face model directory?)",
            path.display(),
            dir.display()
        )),
        _ => bad(format!("{}: {e}", path.display())),
    })?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{}: invalid JSON: {e}", path.display())))?;
    if !value.is_object() {
        return Err(bad(format!("{}: not a JSON object", path.display())));
    }
    Ok((value, text))
}

/// An index file's path and its weight_map as (tensor, file name) pairs.
type Index = (PathBuf, Vec<(String, String)>);

/// `model.safetensors.index.json`, if the directory has one.
fn read_index(dir: &Path) -> Result<Option<Index>> {
    let path = dir.join("model.safetensors.index.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = input::read_to_string(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("{}: invalid JSON: {e}", path.display())))?;
    let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
        return Err(bad(format!("{}: no weight_map object", path.display())));
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (name, file) in map {
        let Some(file) = file.as_str() else {
            return Err(bad(format!(
                "{}: weight_map[{name}] is not a file name",
                path.display()
            )));
        };
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "{}: weight_map[{name}] = {file} is not a plain file name",
                path.display()
            )));
        }
        pairs.push((name.clone(), file.to_string()));
    }
    Ok(Some((path, pairs)))
}

/// The shard files: from the index if present (sorted, unique), else every *.safetensors.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut names: Vec<String> = match read_index(dir)? {
        Some((_, pairs)) => pairs.into_iter().map(|(_, f)| f).collect(),
        None => list_safetensors(dir)?,
    };
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(bad(format!(
            "{}: no *.safetensors files (only safetensors checkpoints are supported)",
            dir.display()
        )));
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn list_safetensors(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && entry.path().is_file() {
            names.push(name);
        }
    }
    Ok(names)
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = input::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad(format!("{}: shard not found", path.display())),
        _ => Error::io(path, e),
    })?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(bad(format!(
            "{}: {len} bytes, too short for a safetensors file",
            path.display()
        )));
    }
    // SAFETY: the file is opened read-only; like every mmap reader (and Python safetensors) we
    // rely on nobody truncating or rewriting the checkpoint while it is open.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}
