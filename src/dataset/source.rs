//! A split's data files, opened without holding every row: JSON and text files are read
//! whole (they are small), parquet files only report their row count (from the footer) until
//! rows are asked for, and then only the row groups holding asked-for rows are decoded and
//! only those rows kept. A Hub dataset of a few
//! hundred thousand chat rows thus costs the memory of the selected samples, not of the split.

use super::table::{self, column_names, Format, Row};
use crate::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::PathBuf;

/// More rows than any calibration or eval split has; a parquet footer claiming more is
/// corrupt (the count sizes allocations).
const MAX_ROWS: usize = 1 << 28;

/// One data file.
enum Part {
    Rows(Vec<Row>),
    Parquet {
        path: PathBuf,
        rows: usize,
        columns: Vec<String>,
    },
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Rows(r) => r.len(),
            Part::Parquet { rows, .. } => *rows,
        }
    }
}

/// The files of one split, in order; row `i` counts across them.
pub struct Source {
    parts: Vec<Part>,
    /// How to name the source in messages.
    pub origin: String,
}

impl Source {
    /// Opens `paths`: JSON and text files are parsed, parquet footers read.
    pub fn open(paths: Vec<PathBuf>, origin: String) -> Result<Source> {
        let parts = paths
            .into_iter()
            .map(|p| match Format::of(&p) {
                Some(Format::Parquet) => parquet_part(p),
                _ => table::read_file(&p).map(Part::Rows),
            })
            .collect::<Result<_>>()?;
        Ok(Source { parts, origin })
    }

    /// Rows in all files.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Column names, first-seen order (parquet: its schema's top-level fields).
    pub fn column_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for part in &self.parts {
            let cols = match part {
                Part::Rows(r) => column_names(r),
                Part::Parquet { columns, .. } => columns.clone(),
            };
            for c in cols {
                if !names.contains(&c) {
                    names.push(c);
                }
            }
        }
        names
    }

    /// Every row.
    pub fn all_rows(&self) -> Result<Vec<Row>> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.rows_at(&all)
    }

    /// The rows at `indices` (each below [`Source::len`]), in that order.
    pub fn rows_at(&self, indices: &[usize]) -> Result<Vec<Row>> {
        let mut wanted: Vec<(usize, usize)> = indices.iter().copied().zip(0..).collect();
        wanted.sort_unstable();
        let mut out: Vec<Option<Row>> = vec![None; indices.len()];
        let mut start = 0;
        let mut next = 0;
        for part in &self.parts {
            let end = start + part.len();
            let here = wanted[next..].iter().take_while(|(i, _)| *i < end).count();
            let slice = &wanted[next..next + here];
            next += here;
            match part {
                Part::Rows(rows) => {
                    for &(i, slot) in slice {
                        out[slot] = Some(rows[i - start].clone());
                    }
                }
                Part::Parquet { path, .. } => pick_parquet(path, start, slice, &mut out)?,
            }
            start = end;
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| Error::Dataset(format!("{}: row out of range", self.origin))))
            .collect()
    }
}

fn open_parquet(path: &PathBuf) -> Result<SerializedFileReader<std::fs::File>> {
    table::read_bytes_check(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    super::parquet::guarded(&name, || {
        SerializedFileReader::new(file).map_err(|e| super::parquet::bad(&name, &e))
    })
}

fn parquet_part(path: PathBuf) -> Result<Part> {
    let reader = open_parquet(&path)?;
    let name = path.display().to_string();
    let (rows, columns) = super::parquet::guarded(&name, || {
        let meta = reader.metadata().file_metadata();
        let columns = meta
            .schema_descr()
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect::<Vec<_>>();
        Ok((meta.num_rows(), columns))
    })?;
    // The footer's count sizes the shuffle's permutation: a corrupt one must not.
    let rows = usize::try_from(rows)
        .ok()
        .filter(|&r| r <= MAX_ROWS)
        .ok_or_else(|| {
            Error::Dataset(format!(
                "{}: not a readable parquet file: its footer claims {rows} rows (at most \
                 {MAX_ROWS} are read)",
                path.display()
            ))
        })?;
    Ok(Part::Parquet {
        path,
        rows,
        columns,
    })
}

/// Streams the file's rows, keeping those in `wanted` (sorted (row, slot) pairs, rows counted
/// from `start`). Decoding goes through [`super::parquet`], which turns the crate's panics on
/// corrupt pages into errors.
fn pick_parquet(
    path: &PathBuf,
    start: usize,
    wanted: &[(usize, usize)],
    out: &mut [Option<Row>],
) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let name = path.display().to_string();
    let reader = open_parquet(path)?;
    let mut w = 0;
    // Row groups holding a wanted row (`wanted` is sorted).
    let group = |first: usize, n: usize| {
        let lo = wanted.partition_point(|(r, _)| r - start < first);
        lo < wanted.len() && wanted[lo].0 - start < first + n
    };
    super::parquet::each_row(reader, &name, &group, &mut |i, row| {
        while w < wanted.len() && wanted[w].0 - start < i {
            w += 1;
        }
        while w < wanted.len() && wanted[w].0 - start == i {
            out[wanted[w].1] = Some(row.clone());
            w += 1;
        }
        w < wanted.len()
    })
}
