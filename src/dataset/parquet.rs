//! `.parquet` data files (the Hub's dataset format and its parquet export), read with the
//! arrow-rs `parquet` crate's row API into the same rows as the JSON readers.

use super::table::Row;
use crate::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Number, Value};
use std::path::Path;

/// Reads every row of a parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    let bytes = super::table::read_bytes(path)?;
    parse_parquet(bytes, &path.display().to_string())
}

/// Parses parquet bytes (a whole file) into rows; `name` is used in messages.
///
/// The `parquet` crate indexes out of bounds on some corrupt pages (its RLE decoder, found by
/// tests/it/fuzz/dataset.rs) instead of returning an error; such a panic is caught here and
/// reported as a corrupt file, without the panic message on stderr.
pub fn parse_parquet(bytes: Vec<u8>, name: &str) -> Result<Vec<Row>> {
    quiet_hook();
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(|| read_rows(bytes, name));
    QUIET.with(|q| q.set(false));
    result.unwrap_or_else(|_| {
        Err(Error::Dataset(format!(
            "{name}: not a readable parquet file: corrupt data"
        )))
    })
}

thread_local! {
    /// Set while this thread decodes parquet: its panics are caught and reported as errors.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent for panics inside [`parse_parquet`] and
/// passes every other panic to the hook that was there before.
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

fn read_rows(bytes: Vec<u8>, name: &str) -> Result<Vec<Row>> {
    let bad = |e: parquet::errors::ParquetError| {
        Error::Dataset(format!(
            "{name}: not a readable parquet file: {}",
            one_line(&e)
        ))
    };
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(bad)?;
    let iter = reader.get_row_iter(None).map_err(bad)?;
    let mut rows = Vec::new();
    for row in iter {
        let row = row.map_err(bad)?;
        rows.push(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_value(v)))
                .collect(),
        );
    }
    Ok(rows)
}

fn one_line(e: &dyn std::fmt::Display) -> String {
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
