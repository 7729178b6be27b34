//! Mutation fuzzing of the shard index (`model.safetensors.index.json`) through
//! `Checkpoint::open`: the JSON mutated at the byte and JSON level, and its weight_map values
//! replaced by hostile file names (traversal, absolute paths, empty, non-strings). Promise:
//! no panic; either a one-line error, or a checkpoint that holds every indexed tensor in
//! the shard the index names, reading only files inside the model directory.

use super::util::{assert_one_line, config, mutate, mutation, Mutation};
use crate::support;
use proptest::prelude::*;
use qforge::checkpoint::Checkpoint;
use serde_json::Value;
use std::fs;
use std::path::Path;

const INDEX: &str = r#"{"metadata":{"total_size":23},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}"#;

fn st_bytes(header: &str, data: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(7u8, data));
    v
}

/// A two-shard model dir (plus a stray shard and a shard outside it, which must never be
/// read) with `index` as its index.
fn model_dir(index: &[u8]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("model");
    fs::create_dir(&d).unwrap();
    fs::copy(
        support::bundled_model().join("config.json"),
        d.join("config.json"),
    )
    .unwrap();
    let s1 = r#"{"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;
    let s2 = r#"{"c":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#;
    let outside = r#"{"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    fs::write(d.join("s1.safetensors"), st_bytes(s1, 20)).unwrap();
    fs::write(d.join("s2.safetensors"), st_bytes(s2, 3)).unwrap();
    fs::write(d.join("stray.safetensors"), b"junk").unwrap();
    fs::write(
        root.path().join("outside.safetensors"),
        st_bytes(outside, 1),
    )
    .unwrap();
    fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    root
}

const NAMES: &[&str] = &[
    "s1.safetensors",
    "s2.safetensors",
    "stray.safetensors",
    "../outside.safetensors",
    "/etc/passwd",
    "..",
    ".",
    "",
    "s1.safetensors/",
    "./s1.safetensors",
    "model/../s1.safetensors",
    "s3.safetensors",
    "config.json",
    "s1.safetensors\u{0}",
    "S1.SAFETENSORS",
];

/// The index with one weight_map entry's file replaced (or a new entry added).
fn with_name(key: &str, name: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(INDEX).unwrap();
    v["weight_map"][key] = Value::from(name);
    serde_json::to_vec(&v).unwrap()
}

fn check(index: &[u8]) {
    let root = model_dir(index);
    let dir = root.path().join("model");
    match Checkpoint::open(&dir) {
        Ok(ck) => check_accepted(&ck, &dir, index),
        Err(e) => assert_one_line(&e.to_string()),
    }
}

fn check_accepted(ck: &Checkpoint, dir: &Path, index: &[u8]) {
    for f in ck.files() {
        assert_eq!(
            f.parent(),
            Some(dir),
            "read {} outside the model",
            f.display()
        );
    }
    let v: Value = serde_json::from_slice(index).expect("accepted index is JSON");
    let map = v["weight_map"]
        .as_object()
        .expect("accepted index has a weight_map");
    for (tensor, file) in map {
        let t = ck
            .get(tensor)
            .unwrap_or_else(|| panic!("{tensor} not loaded"));
        let name = ck.files()[t.file].file_name().unwrap();
        assert_eq!(Some(name.to_str().unwrap()), file.as_str(), "{tensor}");
    }
}

proptest! {
    #![proptest_config(config(128, 1))]

    #[test]
    fn index_mutations_end_cleanly(m in mutation()) {
        check(&mutate(INDEX.as_bytes(), &m));
    }

    #[test]
    fn hostile_shard_names_end_cleanly(
        key in prop::sample::select(&["a", "c", "new"][..]),
        name in prop::sample::select(NAMES),
        more in prop::option::of(super::util::mutation()),
    ) {
        let mut index = with_name(key, name);
        if let Some(m @ Mutation::Json(_)) = &more {
            index = mutate(&index, m);
        }
        check(&index);
    }
}

#[test]
fn seed_opens_and_traversal_is_refused() {
    check(INDEX.as_bytes());
    let root = model_dir(&with_name("a", "../outside.safetensors"));
    let e = Checkpoint::open(&root.path().join("model"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a plain file name"), "{e}");
}
