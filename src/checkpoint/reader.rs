//! Memory-mapped reader of a local Hugging Face model directory (config.json + safetensors).
//!
//! Every header is validated up front, so later code can slice tensor data without checks:
//! header length, JSON, dtypes, shapes, offsets (inside the file, right length, no overlap)
//! and tensor names unique across shards. Each failure is one line naming the file and tensor.

use super::dtype::DType;
use crate::{Error, Result};
use memmap2::Mmap;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Largest header Python safetensors accepts (100 MB).
const MAX_HEADER: u64 = 100_000_000;

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
        let infos = parse_header(&path, &map, file_idx)?;
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
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
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
    let text =
        std::fs::read_to_string(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
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
    let file = File::open(path).map_err(|e| match e.kind() {
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

/// Parses and validates one safetensors header; returns its tensors sorted by offset.
fn parse_header(path: &Path, map: &[u8], file: usize) -> Result<Vec<TensorInfo>> {
    let p = path.display();
    let len = map.len() as u64;
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&map[..8]);
    let n = u64::from_le_bytes(n8);
    if !(2..=MAX_HEADER).contains(&n) {
        return Err(bad(format!("{p}: invalid header length {n}")));
    }
    if 8 + n > len {
        return Err(bad(format!(
            "{p}: header length {n} runs past the end of the file ({len} bytes)"
        )));
    }
    let header = &map[8..8 + n as usize];
    let obj: Map<String, Value> = serde_json::from_slice(header)
        .map_err(|e| bad(format!("{p}: header is not a valid JSON object: {e}")))?;
    let data_start = 8 + n as usize;
    let data_len = map.len() - data_start;
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in &obj {
        if name == "__metadata__" {
            check_metadata(path, v)?;
            continue;
        }
        let (dtype, shape, s, e) = parse_entry(v).map_err(|m| bad(format!("{p}: {name}: {m}")))?;
        if e > data_len {
            return Err(bad(format!(
                "{p}: {name}: data_offsets [{s}, {e}] run past the end of the file (data area {data_len} bytes)"
            )));
        }
        let want = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("{p}: {name}: shape {shape:?} is too large")))?;
        if e - s != want {
            return Err(bad(format!(
                "{p}: {name}: data_offsets [{s}, {e}] hold {} bytes but {dtype} {shape:?} needs {want}",
                e - s
            )));
        }
        out.push(TensorInfo {
            name: name.clone(),
            dtype,
            shape,
            file,
            start: data_start + s,
            end: data_start + e,
        });
    }
    out.sort_by_key(|t| (t.start, t.end));
    for w in out.windows(2) {
        if w[1].start < w[0].end {
            return Err(bad(format!(
                "{p}: tensors {} and {} overlap",
                w[0].name, w[1].name
            )));
        }
    }
    Ok(out)
}

fn check_metadata(path: &Path, v: &Value) -> Result<()> {
    let ok = v
        .as_object()
        .is_some_and(|m| m.values().all(Value::is_string));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{}: __metadata__ must map strings to strings",
            path.display()
        )))
    }
}

/// (dtype, shape, start, end) of one header entry, or what is wrong with it.
fn parse_entry(v: &Value) -> Result<(DType, Vec<usize>, usize, usize), String> {
    let obj = v.as_object().ok_or("entry is not a JSON object")?;
    let dname = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("missing dtype")?;
    let dtype = DType::parse(dname).ok_or_else(|| format!("unknown dtype {dname}"))?;
    let shape = usize_list(obj.get("shape")).ok_or("shape is not a list of sizes")?;
    let offs = usize_list(obj.get("data_offsets")).ok_or("data_offsets is not [start, end]")?;
    let [s, e] = offs[..] else {
        return Err("data_offsets is not [start, end]".into());
    };
    if s > e {
        return Err(format!("data_offsets [{s}, {e}] end before they start"));
    }
    Ok((dtype, shape, s, e))
}

fn usize_list(v: Option<&Value>) -> Option<Vec<usize>> {
    v?.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok()))
        .collect()
}
