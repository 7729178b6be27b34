//! Local files: token ids equal to llm-compressor's preprocessing, in its order.

use super::{data, expected, expected_ids, load, spec};
use qforge::dataset::{files, CalibrationSpec};

fn path(name: &str) -> String {
    data(name).to_string_lossy().into_owned()
}

/// Unshuffled: llm-compressor's LengthAwareSampler order (longest first), every sample's ids
/// equal to `TextGenerationDataset`'s tokenization; the empty row is left out, with a warning.
#[test]
fn text_column_tokenizes_like_llm_compressor_longest_first() {
    for max_len in [2048, 16] {
        let want = expected_ids(&format!("text_{max_len}"));
        let set = load(&spec(path("text.jsonl"), 7, max_len, None));
        assert_eq!(set.samples.len(), 6, "the empty row is left out");
        for (ids, &row) in set.samples.iter().zip(&set.rows) {
            assert_eq!(ids, &want[row], "row {row} at max {max_len}");
        }
        let order: Vec<usize> =
            serde_json::from_value(expected(&format!("text_{max_len}_length_aware_4"))).unwrap();
        assert_eq!(
            set.rows[..4],
            order[..],
            "LengthAwareSampler order at max {max_len}"
        );
        assert!(
            set.warnings
                .iter()
                .any(|w| w.contains("1 selected samples had no tokens")),
            "{:?}",
            set.warnings
        );
        let truncated = set
            .warnings
            .iter()
            .any(|w| w.contains("3 of 7") && w.contains("truncated"));
        assert_eq!(truncated, max_len == 16, "{:?}", set.warnings);
        assert!(set.samples.iter().all(|s| s.len() <= max_len));
    }
}

/// Fewer samples than rows, unshuffled: the longest ones, as LengthAwareSampler takes them.
#[test]
fn unshuffled_selection_takes_the_longest() {
    let set = load(&spec(path("text.jsonl"), 4, 16, None));
    let order: Vec<usize> = serde_json::from_value(expected("text_16_length_aware_4")).unwrap();
    assert_eq!(set.rows, order);
    assert!(set.warnings.iter().all(|w| !w.contains("requested")));
}

/// Shuffled: `Dataset.shuffle(seed)` then the first n, as `datasets` orders the rows.
#[test]
fn shuffle_is_datasets_shuffle_then_select() {
    let set = load(&spec(path("text.jsonl"), 5, 2048, Some(42)));
    let ids: Vec<usize> = serde_json::from_value(expected("shuffled_ids_42_5")).unwrap();
    // Row 2 is the empty text: selected, then left out.
    let kept: Vec<usize> = ids.into_iter().filter(|&r| r != 2).collect();
    assert_eq!(set.rows, kept);
    let set = load(&spec(path("text.jsonl"), 7, 2048, Some(7)));
    let ids: Vec<usize> = serde_json::from_value(expected("shuffled_ids_7_7")).unwrap();
    assert_eq!(
        set.rows,
        ids.into_iter().filter(|&r| r != 2).collect::<Vec<_>>()
    );
    let want = expected_ids("text_2048");
    for (ids, &row) in set.samples.iter().zip(&set.rows) {
        assert_eq!(ids, &want[row]);
    }
    assert!(
        set.description.contains("shuffled with seed 7"),
        "{}",
        set.description
    );
}

/// `messages`: the chat template (SmolLM2's, with its default system turn), no special
/// tokens added again, truncated like the examples' `tokenizer(..., truncation=True)`.
#[test]
fn messages_are_rendered_with_the_chat_template() {
    for max_len in [2048, 16] {
        let want = expected_ids(&format!("chat_{max_len}"));
        for file in ["chat.jsonl", "chat.parquet"] {
            let set = load(&spec(path(file), 3, max_len, None));
            assert_eq!(set.samples.len(), 3);
            for (ids, &row) in set.samples.iter().zip(&set.rows) {
                assert_eq!(ids, &want[row], "{file} row {row} at max {max_len}");
            }
            assert!(
                set.description.contains("column 'messages'"),
                "{}",
                set.description
            );
        }
    }
}

/// Parquet (snappy, zstd, gzip pages) reads into the same rows as the JSON files.
#[test]
fn parquet_reads_like_json() {
    for (a, b) in [
        ("text.jsonl", "text.parquet"),
        ("chat.jsonl", "chat.parquet"),
    ] {
        let ja = files::load_rows(&path(a), None, None).unwrap().rows;
        let pb = files::load_rows(&path(b), None, None).unwrap().rows;
        assert_eq!(ja, pb, "{a} vs {b}");
    }
    let ids = load(&spec(path("ids.parquet"), 4, 2048, None));
    let fixture = load(&spec(
        crate::support::fixture("calibration/g128-ids.json").to_string_lossy(),
        32,
        2048,
        None,
    ));
    for (s, &r) in ids.samples.iter().zip(&ids.rows) {
        assert_eq!(
            s,
            &fixture.samples[fixture.rows.iter().position(|&x| x == r).unwrap()]
        );
    }
}

/// The shared fixture `{"input_ids": [[...], ...]}` loads as is: 32 samples of 64 ids, in the
/// order llm-compressor fed them when it made the calibration fixtures (equal lengths, so
/// torch's argsort order: 16, 31, 30, …, 17, 0, 15, …, 1 — not the file order).
#[test]
fn shared_ids_fixture_loads_in_llm_compressors_order() {
    let path = crate::support::fixture("calibration/g128-ids.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let spec = CalibrationSpec {
        num_samples: 32,
        max_seq_length: 64,
        shuffle: None,
        ..CalibrationSpec::new(path.to_string_lossy())
    };
    // input_ids need no tokenizer: any folder will do.
    let set =
        qforge::dataset::load_calibration(&spec, std::path::Path::new("/nonexistent")).unwrap();
    let mut order = vec![16];
    order.extend((17..32).rev());
    order.push(0);
    order.extend((1..16).rev());
    assert_eq!(set.rows, order);
    for (ids, &row) in set.samples.iter().zip(&set.rows) {
        let want: Vec<u32> = serde_json::from_value(raw["input_ids"][row].clone()).unwrap();
        assert_eq!(ids, &want);
    }
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    assert_eq!(set.num_tokens(), 32 * 64);
    set.check_vocab(512).unwrap();
    let err = set.check_vocab(500).unwrap_err().to_string();
    assert!(
        err.contains("dataset row") && err.contains("outside the model's vocabulary of 500"),
        "{err}"
    );
}

/// `.txt`: one sample per line, empty lines included as rows (then left out as empty).
#[test]
fn text_files_are_one_sample_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calib.txt");
    std::fs::write(&file, "first line\r\n\nsecond line\nthird\n").unwrap();
    let rows = files::load_rows(&file.to_string_lossy(), None, None)
        .unwrap()
        .rows;
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["first line", "", "second line", "third"]);
    let set = load(&spec(file.to_string_lossy(), 512, 2048, Some(42)));
    assert_eq!(set.samples.len(), 3);
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("requested 512") && w.contains("only 4")),
        "{:?}",
        set.warnings
    );
}

/// A folder: the split's files picked by name, as `datasets` picks them; `--text-column`.
#[test]
fn folders_pick_the_split_and_text_column_renames() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("train.jsonl"),
        "{\"body\": \"train text\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("test.jsonl"),
        "{\"body\": \"test text one\"}\n{\"body\": \"two\"}\n",
    )
    .unwrap();
    let source = dir.path().to_string_lossy().into_owned();
    let mut s = spec(source.clone(), 10, 2048, None);
    s.text_column = Some("body".into());
    assert_eq!(load(&s).samples.len(), 1);
    s.split = Some("test".into());
    let set = load(&s);
    assert_eq!(set.samples.len(), 2);
    assert!(
        set.description.contains("split 'test'") && set.description.contains("column 'body'"),
        "{}",
        set.description
    );
}

/// SmolLM2's tokenizer made to add a BOS (`<|endoftext|>`, id 0) in front, as Llama's does;
/// make_expected.py builds the same folder.
fn bos_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(super::tokenizer()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join("tokenizer.json");
    let mut tj: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    tj["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}
    });
    std::fs::write(&path, serde_json::to_vec(&tj).unwrap()).unwrap();
    dir
}

/// Special tokens: `text` gets the tokenizer's BOS (inside the length limit, as transformers
/// truncates), rendered `messages` do not get it again.
#[test]
fn text_adds_special_tokens_messages_do_not() {
    let tok = bos_tokenizer();
    let load_with = |file: &str| {
        qforge::dataset::load_calibration(&spec(path(file), 8, 16, None), tok.path()).unwrap()
    };
    let set = load_with("text.jsonl");
    let want = expected_ids("bos_text_16");
    assert_eq!(
        set.samples.len(),
        7,
        "the empty text is the BOS alone, and kept"
    );
    for (ids, &row) in set.samples.iter().zip(&set.rows) {
        assert_eq!(ids, &want[row], "text row {row}");
        assert_eq!(ids[0], 0);
    }
    let set = load_with("chat.jsonl");
    let want = expected_ids("bos_chat_16");
    for (ids, &row) in set.samples.iter().zip(&set.rows) {
        assert_eq!(ids, &want[row], "chat row {row}");
        assert_ne!(ids[0], 0);
    }
}
