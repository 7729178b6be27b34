//! Helpers shared by the integration tests (append only).
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared reference data folder: `$QFORGE_SHARED`, else `../shared` next to the crate.
pub fn shared() -> PathBuf {
    std::env::var_os("QFORGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}
