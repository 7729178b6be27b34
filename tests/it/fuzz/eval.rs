//! Mutation fuzzing of `qforge eval`'s task-file reader: the JSONL files of tests/data/eval
//! (every task's schema), mutated as bytes and as JSON, parsed by `data::parse_jsonl` and
//! turned into prompts by each task's `prepare`. Promise: no panic; either a one-line error,
//! or documents whose prompts and choices are consistent (a gold index inside the choices).
//! The same for the parquet files the Hub serves (tests/data/eval/hub), read by
//! `dataset::parquet` as `qforge eval` reads them without --data-dir.

use super::util::{assert_one_line, config, mutate, mutation};
use proptest::prelude::*;
use proptest::sample::Index;
use qforge::eval::data::parse_jsonl;
use qforge::eval::tasks::{Family, Target};
use std::path::PathBuf;
use std::sync::OnceLock;

const FILES: [(&str, Family); 6] = [
    (
        "allenai/ai2_arc/ARC-Challenge/test.jsonl",
        Family::ArcChallenge,
    ),
    (
        "Rowan/hellaswag/default/validation.jsonl",
        Family::Hellaswag,
    ),
    (
        "allenai/winogrande/winogrande_xl/validation.jsonl",
        Family::Winogrande,
    ),
    ("cais/mmlu/abstract_algebra/test.jsonl", Family::Mmlu),
    (
        "truthfulqa/truthful_qa/multiple_choice/validation.jsonl",
        Family::TruthfulqaMc2,
    ),
    ("openai/gsm8k/main/test.jsonl", Family::Gsm8k),
];

fn seeds() -> &'static [Vec<Vec<u8>>] {
    static SEEDS: OnceLock<Vec<Vec<Vec<u8>>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/eval"));
        // One seed per line (a document), so that JSON-level mutations apply to it.
        let mut out = vec![Vec::new(); FILES.len()];
        for (i, (f, _)) in FILES.iter().enumerate() {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            out[i] = text
                .lines()
                .map(|l| l.as_bytes().to_vec())
                .collect::<Vec<_>>();
        }
        out
    })
}

/// Checks one document: a one-line error, or a gold index inside the choices.
fn check_doc(family: Family, doc: &serde_json::Value) -> Result<(), TestCaseError> {
    match family.prepare(doc) {
        Err(e) => assert_one_line(&e.to_string()),
        Ok(p) => match p.target {
            Target::Index(g) if family == Family::Winogrande => prop_assert!(g < p.text.len()),
            Target::Index(g) => prop_assert!(g < p.choices.len()),
            Target::Text(_) => prop_assert_eq!(family, Family::Gsm8k),
        },
    }
    Ok(())
}

const PARQUET: [(&str, Family); 2] = [
    (
        "allenai/ai2_arc/ARC-Challenge/test-00000-of-00001.parquet",
        Family::ArcChallenge,
    ),
    (
        "Rowan/hellaswag/data/validation-00000-of-00001.parquet",
        Family::Hellaswag,
    ),
];

fn parquet_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/eval/hub"));
        PARQUET
            .iter()
            .map(|(f, _)| std::fs::read(dir.join(f)).unwrap())
            .collect()
    })
}

proptest! {
    #![proptest_config(config(128, 1))]
    #[test]
    fn hub_parquet_task_files_parse_or_fail_in_one_line(which in any::<Index>(), m in mutation()) {
        let i = which.index(PARQUET.len());
        let bytes = mutate(&parquet_seeds()[i], &m);
        match qforge::dataset::parquet::parse_parquet(bytes, PARQUET[i].0) {
            Err(e) => assert_one_line(&e.to_string()),
            Ok(rows) => {
                for row in rows {
                    check_doc(PARQUET[i].1, &serde_json::Value::Object(row))?;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256, 1))]
    #[test]
    fn task_files_parse_or_fail_in_one_line(which in any::<Index>(), line in any::<Index>(), m in mutation()) {
        let i = which.index(FILES.len());
        let lines = &seeds()[i];
        let bytes = mutate(&lines[line.index(lines.len())], &m);
        // A JSON mutation comes back pretty-printed: one line again for JSONL.
        let text = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => v.to_string(),
            Err(_) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => return Ok(()),
            },
        };
        match parse_jsonl(&text) {
            Err(e) => assert_one_line(&e),
            Ok(docs) => {
                for doc in &docs {
                    check_doc(FILES[i].1, doc)?;
                }
            }
        }
    }
}
