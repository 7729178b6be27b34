//! Mutation fuzzing of the dataset readers (`qforge::dataset`): `.json` / `.jsonl` (records,
//! columns, JSON Lines), `.txt`, `.parquet` (snappy, zstd and gzip pages) and the dataset
//! card's YAML header, seeded from tests/data/calib and the shared ids fixture; plus the whole
//! calibration path on mutated `input_ids` files. Promise: no panic, no hang; either a
//! one-line error or rows (samples) that keep the format's rules.

use super::util::{apply, assert_one_line, byte_op, config, mutate, mutation};
use proptest::prelude::*;
use qforge::dataset::parquet::parse_parquet;
use qforge::dataset::table::{parse_json, parse_text};
use qforge::dataset::{files, load_calibration, CalibrationSpec};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn calib(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/calib"));
    std::fs::read(dir.join(name)).unwrap()
}

fn json_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let ids = crate::support::fixture("calibration/g128-ids.json");
        let mut small: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ids).unwrap()).unwrap();
        small["input_ids"].as_array_mut().unwrap().truncate(3);
        vec![
            calib("text.jsonl"),
            calib("chat.jsonl"),
            serde_json::to_vec(&small).unwrap(),
            br#"[{"text": "a", "n": 1}, {"text": "b", "n": [2]}]"#.to_vec(),
        ]
    })
}

fn parquet_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        ["text.parquet", "chat.parquet", "ids.parquet"]
            .map(calib)
            .to_vec()
    })
}

/// Rows are objects by construction; an accepted file's rows re-serialize.
fn check_rows(result: qforge::Result<Vec<qforge::dataset::Row>>) {
    match result {
        Ok(rows) => {
            for row in rows {
                serde_json::to_string(&row).unwrap();
            }
        }
        Err(e) => assert_one_line(&e.to_string()),
    }
}

/// The calibration path on a file of `input_ids` (no tokenizer needed): accepted samples are
/// non-empty and within the length limit, one dataset row each.
fn check_calibration(bytes: &[u8], ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("calib.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let spec = CalibrationSpec {
        num_samples: 4,
        max_seq_length: 16,
        shuffle: Some(42),
        ..CalibrationSpec::new(path.to_string_lossy())
    };
    match load_calibration(&spec, Path::new("/nonexistent-tokenizer")) {
        Ok(set) => {
            assert_eq!(set.samples.len(), set.rows.len());
            assert!(set.samples.len() <= 4);
            assert!(set.samples.iter().all(|s| !s.is_empty() && s.len() <= 16));
            let mut rows = set.rows.clone();
            rows.dedup();
            assert_eq!(rows.len(), set.rows.len());
        }
        Err(e) => assert_one_line(&e.to_string()),
    }
}

proptest! {
    #![proptest_config(config(256, 1))]

    #[test]
    fn json_mutations_end_cleanly(seed in 0..4usize, m in mutation()) {
        let bytes = mutate(&json_seeds()[seed], &m);
        check_rows(parse_json(&bytes, "calib.jsonl"));
    }

    #[test]
    fn text_mutations_end_cleanly(ops in prop::collection::vec(byte_op(), 1..6)) {
        let mut bytes = b"line one\r\nline two\n\n\xe2\x80\xa8last".to_vec();
        apply(&mut bytes, &ops, None);
        check_rows(parse_text(&bytes, "calib.txt"));
    }

    #[test]
    fn random_bytes_end_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_rows(parse_json(&bytes, "r.json"));
        check_rows(parse_text(&bytes, "r.txt"));
        check_rows(parse_parquet(bytes.clone(), "r.parquet"));
        let mut with_magic = b"PAR1".to_vec();
        with_magic.extend(&bytes);
        with_magic.extend(b"PAR1");
        check_rows(parse_parquet(with_magic, "m.parquet"));
    }

    #[test]
    fn ids_files_through_calibration_end_cleanly(m in mutation()) {
        check_calibration(&mutate(&json_seeds()[2], &m), "json");
    }

    #[test]
    fn readme_headers_end_cleanly(ops in prop::collection::vec(byte_op(), 1..5)) {
        let mut card = b"---\nconfigs:\n- config_name: default\n  default: true\n  data_files:\n  - split: train\n    path: data/train-*\n- config_name: b\n  data_files: b/*.jsonl\n---\n".to_vec();
        apply(&mut card, &ops, None);
        let listing = vec!["data/train-00000-of-00001.parquet".to_string(), "b/x.jsonl".to_string()];
        let readme = String::from_utf8_lossy(&card);
        for config in [None, Some("b")] {
            if let Err(e) = files::select_files(&listing, Some(&readme), None, config, "d") {
                assert_one_line(&e.to_string());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256, 2))]

    #[test]
    fn parquet_mutations_end_cleanly(seed in 0..3usize, ops in prop::collection::vec(byte_op(), 1..5)) {
        let mut bytes = parquet_seeds()[seed].clone();
        apply(&mut bytes, &ops, None);
        check_rows(parse_parquet(bytes.clone(), "calib.parquet"));
        check_calibration(&bytes, "parquet");
    }
}
