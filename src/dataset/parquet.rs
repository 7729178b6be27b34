//! `.parquet` data files (the Hub's dataset format and its parquet export), read with the
//! arrow-rs `parquet` crate's row API into the same rows as the JSON readers.

use super::table::Row;
use crate::{Error, Result};
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Number, Value};
use std::path::Path;

/// Reads every row of a parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    let bytes = super::table::read_bytes(path)?;
    parse_parquet(bytes, &path.display().to_string())
}

/// Parses parquet bytes (a whole file) into rows; `name` is used in messages.
pub fn parse_parquet(bytes: Vec<u8>, name: &str) -> Result<Vec<Row>> {
    let reader = guarded(name, || {
        SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(|e| bad(name, &e))
    })?;
    let mut rows = Vec::new();
    each_row(reader, name, &|_, _| true, &mut |_, row| {
        rows.push(row.clone());
        true
    })?;
    Ok(rows)
}

pub(crate) fn bad(name: &str, e: &parquet::errors::ParquetError) -> Error {
    Error::Dataset(format!(
        "{name}: not a readable parquet file: {}",
        one_line(e)
    ))
}

/// Calls `f(row index, row)` for the rows of the row groups `group(first row, rows)` wants,
/// in order, until it returns false.
pub fn each_row<R: ChunkReader + 'static>(
    reader: SerializedFileReader<R>,
    name: &str,
    group: &dyn Fn(usize, usize) -> bool,
    f: &mut dyn FnMut(usize, &Row) -> bool,
) -> Result<()> {
    guarded(name, || walk_rows(&reader, name, group, f))
}

/// Runs `work` (calls into the `parquet` crate on file `name`), turning a panic into an error.
///
/// The crate panics on some corrupt input instead of returning an error (an unwrap in its
/// footer's thrift decoder, out-of-bounds indexing in its RLE decoder: found by
/// tests/it/fuzz/dataset.rs); such a panic is caught here and reported as a corrupt file,
/// without the panic message on stderr.
pub(crate) fn guarded<T>(name: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    QUIET.with(|q| q.set(was));
    result.unwrap_or_else(|_| {
        Err(Error::Dataset(format!(
            "{name}: not a readable parquet file: corrupt data"
        )))
    })
}

fn walk_rows<R: ChunkReader + 'static>(
    reader: &SerializedFileReader<R>,
    name: &str,
    group: &dyn Fn(usize, usize) -> bool,
    f: &mut dyn FnMut(usize, &Row) -> bool,
) -> Result<()> {
    let mut first = 0;
    for g in 0..reader.num_row_groups() {
        let n = usize::try_from(reader.metadata().row_group(g).num_rows()).unwrap_or(0);
        if group(first, n) {
            let rg = reader.get_row_group(g).map_err(|e| bad(name, &e))?;
            let iter = rg.get_row_iter(None).map_err(|e| bad(name, &e))?;
            for (i, row) in iter.enumerate() {
                let row = row.map_err(|e| bad(name, &e))?;
                let row: Row = row
                    .get_column_iter()
                    .map(|(k, v)| (k.clone(), field_value(v)))
                    .collect();
                if !f(first + i, &row) {
                    return Ok(());
                }
            }
        }
        first += n;
    }
    Ok(())
}

thread_local! {
    /// Set while this thread decodes parquet: its panics are caught and reported as errors.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent for panics inside [`guarded`] and passes
/// every other panic to the hook that was there before.
fn quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parquet value as JSON: numbers, strings, lists, structs and maps as `datasets` gives
/// them to Python (binary that is UTF-8 becomes a string; dates and times as text).
fn field_value(f: &Field) -> Value {
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(x) => float(f64::from(*x)),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Array(b.data().iter().map(|&x| Value::from(x)).collect()),
        },
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_value(v)))
                .collect(),
        ),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_value).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_value(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_value(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}
