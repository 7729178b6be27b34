//! One safetensors file's header, validated by the `safetensors` crate itself, so qforge
//! accepts exactly the files the reference implementation accepts: header length inside the
//! file, UTF-8 JSON, known dtypes, sizes matching shapes, and data offsets that tile the data
//! area from byte 0 to the end of the file with no gap, overlap or trailing bytes.
//!
//! qforge adds three rules of its own: the header starts with `{` (Python safetensors'
//! `InvalidHeaderStart`), no JSON key appears twice (serde_json would silently keep the last
//! one, so a second entry could replace a tensor), and the dtype is one qforge handles.
//!
//! When the crate refuses a file, its error is turned into one line naming the tensor and the
//! rule it breaks; the code below only explains a refusal, it never overrules one.

use super::dtype::DType;
use super::reader::TensorInfo;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, Metadata, SafeTensorError, TensorInfo as StInfo};
use safetensors::SafeTensors;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// Largest header the safetensors crate accepts (100 MB).
const MAX_HEADER: u64 = 100_000_000;

fn bad(path: &Path, msg: impl fmt::Display) -> Error {
    Error::Checkpoint(format!("{}: {msg}", path.display()))
}

/// Validates the safetensors file `bytes` (the whole file); returns its tensors sorted by
/// offset, with absolute byte ranges, tagged with `file`.
pub(crate) fn parse(path: &Path, bytes: &[u8], file: usize) -> Result<Vec<TensorInfo>> {
    let header = header_bytes(bytes).map_err(|m| bad(path, m))?;
    let data_start = 8 + header.len();
    let metadata = match SafeTensors::read_metadata(bytes) {
        Ok((_, metadata)) => metadata,
        Err(e) => return Err(bad(path, explain(&e, header, bytes.len() - data_start))),
    };
    if let Err(e) = serde_json::from_slice::<NoDupes>(header) {
        return Err(bad(
            path,
            format!("header: {e} (the last one would silently win)"),
        ));
    }
    // In offset order (names break ties between zero-size tensors), so both the result and
    // which tensor an error names are deterministic.
    let mut tensors: Vec<_> = metadata.tensors().into_iter().collect();
    tensors.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let Some(dtype) = DType::parse(&info.dtype.to_string()) else {
            return Err(bad(
                path,
                format!("{name}: dtype {} is not supported by qforge", info.dtype),
            ));
        };
        let (s, e) = info.data_offsets;
        out.push(TensorInfo {
            name,
            dtype,
            shape: info.shape.clone(),
            file,
            start: data_start + s,
            end: data_start + e,
        });
    }
    Ok(out)
}

/// The header's JSON bytes, after the checks whose messages need the numbers.
fn header_bytes(bytes: &[u8]) -> Result<&[u8], String> {
    let len = bytes.len() as u64;
    let Some(n8) = bytes.first_chunk::<8>() else {
        return Err(format!("{len} bytes, too short for a safetensors file"));
    };
    let n = u64::from_le_bytes(*n8);
    // The smallest header is `{}`; an unfinished writer leaves 0 here.
    if !(2..=MAX_HEADER).contains(&n) {
        return Err(format!("invalid header length {n} (2 to 100 MB)"));
    }
    if 8 + n > len {
        return Err(format!(
            "header length {n} runs past the end of the file ({len} bytes)"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    if header.first() != Some(&b'{') {
        return Err("header does not start with '{' (safetensors InvalidHeaderStart)".into());
    }
    Ok(header)
}

/// One line saying which tensor breaks which rule, for an error of `read_metadata`.
fn explain(e: &SafeTensorError, header: &[u8], data_len: usize) -> String {
    // The crate parsed the JSON before failing on these, so the entries below parse too.
    let entries = serde_json::from_slice::<Map<String, Value>>(header);
    let entries = match (e, entries) {
        (SafeTensorError::InvalidHeader(u), _) => return format!("header is not UTF-8: {u}"),
        (_, Err(j)) => return format!("header is not a valid JSON object: {j}"),
        (_, Ok(entries)) => entries,
    };
    let found = match e {
        SafeTensorError::InvalidOffset(name) => offset_problem(&entries, name),
        SafeTensorError::MetadataIncompleteBuffer => Some(coverage_problem(&entries, data_len)),
        _ => entries.iter().find_map(|(name, v)| entry_problem(name, v)),
    };
    found.unwrap_or_else(|| format!("invalid safetensors header: {e}"))
}

/// What is wrong with one header entry on its own, if anything.
fn entry_problem(name: &str, v: &Value) -> Option<String> {
    if name == "__metadata__" {
        let ok = v.is_null() || HashMap::<String, String>::deserialize(v).is_ok();
        return (!ok).then(|| "__metadata__ must map strings to strings".to_string());
    }
    let problem = |m: String| Some(format!("{name}: {m}"));
    let Some(obj) = v.as_object() else {
        return problem("entry is not a JSON object".into());
    };
    let dtype = match obj.get("dtype") {
        None => return problem("missing dtype".into()),
        Some(d) => match Dtype::deserialize(d) {
            Ok(d) => d,
            Err(_) => match d.as_str() {
                Some(d) => return problem(format!("unknown dtype {d}")),
                None => return problem(format!("dtype {d} is not a string")),
            },
        },
    };
    let Some(Ok(shape)) = obj.get("shape").map(Vec::<usize>::deserialize) else {
        return problem("shape is not a list of sizes".into());
    };
    let Some(Ok((s, e))) = obj.get("data_offsets").map(<(usize, usize)>::deserialize) else {
        return problem("data_offsets is not [start, end]".into());
    };
    if let Err(err) = StInfo::deserialize(v) {
        return problem(err.to_string());
    }
    if e < s {
        return problem(format!("data_offsets [{s}, {e}] end before they start"));
    }
    // The crate's own size rule, on this tensor alone.
    let alone = StInfo {
        dtype,
        shape: shape.clone(),
        data_offsets: (0, e - s),
    };
    match Metadata::new(None, vec![(name.to_string(), alone)]) {
        Ok(_) => None,
        Err(SafeTensorError::TensorInvalidInfo) => {
            let bits = shape
                .iter()
                .try_fold(dtype.bitsize(), |a, &d| a.checked_mul(d));
            let need = bits.unwrap_or_default() / 8;
            problem(format!(
                "data_offsets [{s}, {e}] hold {} bytes but {dtype} {shape:?} needs {need}",
                e - s
            ))
        }
        Err(err) => problem(format!("{dtype} {shape:?}: {err}")),
    }
}

/// The tensors' (start, end, name), sorted as the crate sorts them.
fn spans(entries: &Map<String, Value>) -> Vec<(usize, usize, &str)> {
    let mut out: Vec<_> = entries
        .iter()
        .filter_map(|(name, v)| {
            let (s, e) = <(usize, usize)>::deserialize(v.get("data_offsets")?).ok()?;
            Some((s, e, name.as_str()))
        })
        .collect();
    out.sort();
    out
}

/// For `InvalidOffset`: where tensor `name` starts compared with where the previous one ends.
fn offset_problem(entries: &Map<String, Value>, name: &str) -> Option<String> {
    let spans = spans(entries);
    let i = spans.iter().position(|t| t.2 == name)?;
    let (s, e, _) = spans[i];
    let at = format!("{name}: data_offsets [{s}, {e}]");
    let rule = "the tensors must tile the data area from byte 0 (safetensors InvalidOffset)";
    if e < s {
        return Some(format!("{at} end before they start"));
    }
    if i == 0 {
        return Some(format!(
            "{at}: the first tensor starts at {s}, not 0; {rule}"
        ));
    }
    let prev = spans[i - 1].1;
    let what = if s < prev {
        "they overlap"
    } else {
        "a hole between them"
    };
    Some(format!(
        "{at} start at {s} but the previous tensor ends at {prev}: {what}; {rule}"
    ))
}

/// For `MetadataIncompleteBuffer`: the tensors do not end exactly at the end of the file.
fn coverage_problem(entries: &Map<String, Value>, data_len: usize) -> String {
    let spans = spans(entries);
    let end = spans.last().map_or(0, |t| t.1);
    if let Some(&(s, e, name)) = spans.last().filter(|t| t.1 > data_len) {
        return format!(
            "{name}: data_offsets [{s}, {e}] run past the end of the file (data area {data_len} bytes)"
        );
    }
    format!(
        "the tensors end at {end} but the data area holds {data_len} bytes: {} bytes after the \
         last tensor belong to no tensor (safetensors MetadataIncompleteBuffer: a wrong header \
         length, or bytes appended to the file?)",
        data_len - end
    )
}

/// Any JSON value, read only to refuse an object with the same key twice.
struct NoDupes;

impl<'de> Deserialize<'de> for NoDupes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDupes)
    }
}

impl<'de> Visitor<'de> for NoDupes {
    type Value = NoDupes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDupes>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!("key {key:?} appears twice")));
            }
            map.next_value::<NoDupes>()?;
        }
        Ok(self)
    }
}
