//! Bad input: one clear line each, naming what is wrong.

use super::{data, load, load_err, spec};
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn missing_file_and_unknown_source() {
    let m = load_err(&spec("/nonexistent/calib.jsonl", 8, 64, None));
    assert!(m.contains("/nonexistent/calib.jsonl: no such file"), "{m}");
    let m = load_err(&spec("not a dataset", 8, 64, None));
    assert!(
        m.contains("no such file or folder, and not a Hugging Face dataset id"),
        "{m}"
    );
    let dir = tempfile::tempdir().unwrap();
    let m = load_err(&spec(write(dir.path(), "calib.csv", "a,b\n"), 8, 64, None));
    assert!(m.contains("unsupported data file"), "{m}");
}

#[test]
fn empty_dataset() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("e.jsonl", ""), ("e.json", "[]"), ("e.txt", "")] {
        let m = load_err(&spec(write(dir.path(), name, text), 8, 64, None));
        assert!(m.contains("the dataset is empty"), "{name}: {m}");
    }
    let m = load_err(&spec(write(dir.path(), "blank.txt", "\n\n"), 8, 64, None));
    assert!(m.contains("no calibration sample has any tokens"), "{m}");
}

#[test]
fn missing_column_lists_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.jsonl",
        "{\"prompt\": \"x\", \"answer\": \"y\"}\n",
    );
    let m = load_err(&spec(f.clone(), 8, 64, None));
    assert!(
        m.contains("no 'input_ids', 'messages' or 'text' column")
            && m.contains("its columns are: prompt, answer"),
        "{m}"
    );
    let mut s = spec(f, 8, 64, None);
    s.text_column = Some("content".into());
    let m = load_err(&s);
    assert!(
        m.contains("no column 'content'; its columns are: prompt, answer"),
        "{m}"
    );
}

#[test]
fn fewer_samples_than_asked_warns_and_uses_them_all() {
    let set = load(&spec(
        data("text.jsonl").to_string_lossy(),
        512,
        2048,
        Some(42),
    ));
    assert_eq!(set.rows.len(), 6);
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("requested 512 calibration samples") && w.contains("has only 7")),
        "{:?}",
        set.warnings
    );
}

#[test]
fn malformed_json_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "bad.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"b\"\n{\"text\": \"c\"}\n",
    );
    let m = load_err(&spec(f, 8, 64, None));
    assert!(m.contains("bad.jsonl: line 2: malformed JSON"), "{m}");
    let f = write(dir.path(), "list.jsonl", "{\"text\": \"a\"}\n[1, 2]\n");
    let m = load_err(&spec(f, 8, 64, None));
    assert!(m.contains("line 2 is a list, not a JSON object"), "{m}");
    let f = write(
        dir.path(),
        "cols.json",
        "{\"input_ids\": [[1, 2]], \"x\": [1, 2]}",
    );
    let m = load_err(&spec(f, 8, 64, None));
    assert!(m.contains("columns differ in length"), "{m}");
}

#[test]
fn bad_values_name_the_row() {
    let dir = tempfile::tempdir().unwrap();
    for (text, what) in [
        (
            "{\"input_ids\": [1, 2]}\n{\"input_ids\": [3, -4]}\n",
            "dataset row 1: 'input_ids' is not a list of token ids",
        ),
        (
            "{\"input_ids\": [1, 99999999999]}\n",
            "dataset row 0: 'input_ids' is not a list of token ids",
        ),
        (
            "{\"text\": \"ok\"}\n{\"text\": 5}\n",
            "dataset row 1: 'text' is not a string",
        ),
        (
            "{\"messages\": [{\"content\": \"no role\"}]}\n",
            "dataset row 0: 'messages' is not a list of messages",
        ),
    ] {
        let m = load_err(&spec(write(dir.path(), "v.jsonl", text), 8, 64, None));
        assert!(m.contains(what), "{m}");
    }
}

#[test]
fn bad_split_and_options() {
    let f = data("text.jsonl").to_string_lossy().into_owned();
    let mut s = spec(f.clone(), 8, 64, None);
    s.split = Some("validation".into());
    let m = load_err(&s);
    assert!(
        m.contains("is a single file, which is the 'train' split; there is no split 'validation'"),
        "{m}"
    );
    let m = load_err(&spec(f, 8, 0, None));
    assert!(
        m.contains("maximum sequence length must be at least 1"),
        "{m}"
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.jsonl", "{\"text\": \"a\"}\n");
    let mut s = spec(dir.path().to_string_lossy(), 8, 64, None);
    s.split = Some("train[:10]".into());
    assert!(load_err(&s).contains("split slicing is not supported"));
    s.split = Some("test".into());
    assert!(load_err(&s).contains("no split 'test'; its splits are: train"));
}

#[test]
fn messages_need_a_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    // A tokenizer without a chat template.
    let tok = crate::dataset::tokenizer();
    std::fs::copy(
        tok.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let s = spec(data("chat.jsonl").to_string_lossy(), 8, 64, None);
    let m = qforge::dataset::load_calibration(&s, dir.path())
        .unwrap_err()
        .to_string();
    assert!(m.contains("has no chat template to render them"), "{m}");
}
