//! Local data files read into rows (one JSON object per sample), as `datasets`' builders read
//! them: `json` (JSON Lines, a list of records, or a dict of equal-length columns), `text` (one
//! row per line, in a `text` column) and `parquet` (see [`super::parquet`]). Reusable by any
//! reader of outside datasets (calibration, eval tasks).

use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// One sample: column name → value.
pub type Row = Map<String, Value>;

/// The format of a data file, from its extension (as `datasets` picks its builder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
    Parquet,
}

impl Format {
    /// `.json` / `.jsonl` → json, `.txt` → text, `.parquet` → parquet; `None` for the rest.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" | "jsonl" => Some(Format::Json),
            "txt" => Some(Format::Text),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Reads a data file into rows, picking the reader by extension.
pub fn read_file(path: &Path) -> Result<Vec<Row>> {
    let Some(format) = Format::of(path) else {
        return Err(Error::Dataset(format!(
            "{}: unsupported data file (use .jsonl, .json, .parquet or .txt)",
            path.display()
        )));
    };
    if format == Format::Parquet {
        return super::parquet::read_parquet(path);
    }
    let bytes = read_bytes(path)?;
    let name = path.display().to_string();
    match format {
        Format::Json => parse_json(&bytes, &name),
        Format::Text => parse_text(&bytes, &name),
        Format::Parquet => unreachable!("handled above"),
    }
}

/// The whole file, with a dataset-worded error when it is not there.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    read_bytes_check(path)?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Fails with a dataset-worded error unless `path` is a regular file.
pub fn read_bytes_check(path: &Path) -> Result<()> {
    crate::checkpoint::input::check_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Dataset(format!("{}: no such file", path.display())),
        _ => Error::io(path, e),
    })
}

fn utf8<'a>(bytes: &'a [u8], name: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        Error::Dataset(format!(
            "{name}: not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// A `.json` / `.jsonl` file. Like `datasets`' json builder: a whole-file JSON list of objects
/// is a list of records, a whole-file object of equal-length lists is a dict of columns, and
/// anything else is read as JSON Lines (one object a line, blank lines skipped).
pub fn parse_json(bytes: &[u8], name: &str) -> Result<Vec<Row>> {
    let text = utf8(bytes, name)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => records(items, name),
        Ok(Value::Object(map)) if is_columns(&map) => columns(map, name),
        _ => parse_jsonl(text, name),
    }
}

fn records(items: Vec<Value>, name: &str) -> Result<Vec<Row>> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(row) => Ok(row),
            other => Err(Error::Dataset(format!(
                "{name}: record {i} is {}, not an object",
                kind(&other)
            ))),
        })
        .collect()
}

/// A dict whose values are all lists (`{"input_ids": [[...], ...]}`).
fn is_columns(map: &Row) -> bool {
    !map.is_empty() && map.values().all(Value::is_array)
}

fn columns(map: Row, name: &str) -> Result<Vec<Row>> {
    let lens: Vec<(String, usize)> = map
        .iter()
        .map(|(k, v)| (k.clone(), v.as_array().map_or(0, Vec::len)))
        .collect();
    let n = lens[0].1;
    if let Some((col, len)) = lens.iter().find(|(_, l)| *l != n) {
        return Err(Error::Dataset(format!(
            "{name}: columns differ in length ('{}' has {n} values, '{col}' has {len})",
            lens[0].0
        )));
    }
    let mut rows = vec![Row::new(); n];
    for (col, values) in map {
        let Value::Array(values) = values else {
            unreachable!("is_columns checked")
        };
        for (row, v) in rows.iter_mut().zip(values) {
            row.insert(col.clone(), v);
        }
    }
    Ok(rows)
}

/// JSON Lines: one object a line; a line that is not one is named (1-based).
pub fn parse_jsonl(text: &str, name: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(row)) => rows.push(row),
            Ok(other) => {
                return Err(Error::Dataset(format!(
                    "{name}: line {} is {}, not a JSON object",
                    i + 1,
                    kind(&other)
                )))
            }
            Err(e) => {
                return Err(Error::Dataset(format!(
                    "{name}: line {}: malformed JSON: {e}",
                    i + 1
                )))
            }
        }
    }
    Ok(rows)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A `.txt` file as `datasets`' text builder reads it (`sample_by="line"`,
/// `keep_linebreaks=False`): universal newlines, then Python's `str.splitlines`, one row per
/// line in a `text` column, empty lines included.
pub fn parse_text(bytes: &[u8], name: &str) -> Result<Vec<Row>> {
    let text = utf8(bytes, name)?;
    Ok(splitlines(text)
        .into_iter()
        .map(|line| {
            let mut row = Row::new();
            row.insert("text".into(), Value::String(line.to_string()));
            row
        })
        .collect())
}

/// Python's `str.splitlines()` (without ends): `\r\n` is one break; so are `\n`, `\r`,
/// `\x0b`, `\x0c`, `\x1c`–`\x1e`, `\x85`, U+2028 and U+2029. No empty last line.
pub fn splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        lines.push(&text[start..i]);
        start = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(j, '\n')) = chars.peek() {
                chars.next();
                start = j + 1;
            }
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// The column names of `rows`, in first-seen order.
pub fn column_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for row in rows {
        for k in row.keys() {
            if !names.iter().any(|n| n == k) {
                names.push(k.clone());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_like_python() {
        assert_eq!(
            splitlines("a\nb\r\nc\rd\x0be\u{2028}f\n"),
            ["a", "b", "c", "d", "e", "f"]
        );
        assert_eq!(splitlines("\n\nx"), ["", "", "x"]);
        assert!(splitlines("").is_empty());
    }

    #[test]
    fn json_shapes() {
        let recs = parse_json(br#"[{"text": "a"}, {"text": "b"}]"#, "f").unwrap();
        assert_eq!(recs.len(), 2);
        let cols = parse_json(br#"{"input_ids": [[1, 2], [3]], "n": [1, 2]}"#, "f").unwrap();
        assert_eq!(cols[1]["input_ids"], serde_json::json!([3]));
        let lines = parse_json(b"{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n", "f").unwrap();
        assert_eq!(lines.len(), 2);
        let err = parse_json(b"{\"text\": \"a\"}\n{\"text\": \n", "f.jsonl").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("f.jsonl: line 2: malformed JSON"),
            "{err}"
        );
        let err = parse_json(br#"{"a": [1], "b": [1, 2]}"#, "f").unwrap_err();
        assert!(err.to_string().contains("differ in length"), "{err}");
    }
}
