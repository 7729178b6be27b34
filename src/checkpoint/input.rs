//! Opening input files (config.json, tokenizer files, recipes, index files, shards) only when
//! they are regular files. Opening a FIFO for reading blocks until a writer appears, which for
//! a mistyped path means qforge hangs forever; a directory or device is no better. So the
//! file type is checked before the open, and anything else is refused with a one-line reason.
//!
//! The functions mirror `std::fs` and return `std::io::Error`, so callers keep their own
//! not-found handling and wrap other failures with [`crate::Error::io`], which names the path:
//! `config.json: is a FIFO, not a regular file`.

use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Fails with `InvalidInput` unless `path` (after symlinks) is a regular file.
pub fn check_regular(path: &Path) -> Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "a special file"
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!("is {what}, not a regular file"),
    ))
}

/// [`File::open`] for regular files only.
pub fn open(path: &Path) -> Result<File> {
    check_regular(path)?;
    File::open(path)
}

/// [`std::fs::read_to_string`] for regular files only.
pub fn read_to_string(path: &Path) -> Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path)
}

/// [`std::fs::read`] for regular files only.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path)
}
