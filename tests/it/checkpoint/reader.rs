//! Checkpoint reader: opens the real fixtures, and rejects every kind of corrupt input with a
//! one-line error naming the file (and tensor).

use crate::support::fixture;

use qforge::checkpoint::{Checkpoint, DType};
use std::fs;
use std::path::Path;

#[test]
fn opens_tiny_llama3_bf16() {
    let ck = Checkpoint::open(&fixture("tiny-llama3-bf16")).unwrap();
    assert_eq!(ck.files().len(), 1);
    // 2 layers × (7 Linear + 2 norms) + embed + norm + lm_head.
    assert_eq!(ck.tensors().len(), 21);
    assert_eq!(ck.config["hidden_size"], 32);
    assert!(ck.config_text.contains("\"rope_scaling\""));
    let lm = ck.get("lm_head.weight").unwrap();
    assert_eq!((lm.dtype, lm.shape.clone()), (DType::BF16, vec![49152, 32]));
    assert_eq!(lm.nbytes(), 49152 * 32 * 2);
    // Stable order: by offset, contiguous, data area ends at the end of the file.
    let ts = ck.tensors();
    for w in ts.windows(2) {
        assert_eq!(w[0].end, w[1].start);
    }
    let len = fs::metadata(&ck.files()[0]).unwrap().len() as usize;
    assert_eq!(ts.last().unwrap().end, len);
    // Edge row 1 of fixtures/README.md §1.1: q_proj L0 row 5 is all +0.0.
    let q = ck.get("model.layers.0.self_attn.q_proj.weight").unwrap();
    let cols = q.shape[1];
    let row5 = &ck.data(q)[5 * cols * 2..6 * cols * 2];
    assert!(row5.iter().all(|&b| b == 0));
    // and k_proj L0 row 1 is all -0.0 (bf16 0x8000 little-endian).
    let k = ck.get("model.layers.0.self_attn.k_proj.weight").unwrap();
    let row1 = &ck.data(k)[k.shape[1] * 2..k.shape[1] * 4];
    assert!(row1.chunks(2).all(|c| c == [0x00, 0x80]));
}

#[test]
fn opens_fp8_fixture_and_scheme_outputs() {
    let ck = Checkpoint::open(&fixture("tiny-tied-fp8-dynamic")).unwrap();
    assert_eq!(ck.tensors().len(), 34);
    assert!(ck.get("lm_head.weight").is_none());
    let w = ck.get("model.layers.1.mlp.up_proj.weight").unwrap();
    assert_eq!(w.dtype, DType::F8_E4M3);
    let s = ck.get("model.layers.1.mlp.up_proj.weight_scale").unwrap();
    assert_eq!(
        (s.dtype, s.shape.clone()),
        (DType::BF16, vec![w.shape[0], 1])
    );
    for scheme in ["g128-W4A16_ASYM", "g128-NVFP4A16", "unaligned-MXFP4A16"] {
        let ck = Checkpoint::open(&fixture("schemes").join(scheme)).unwrap();
        assert!(ck.tensors().len() >= 35, "{scheme}");
    }
}

// ---- corrupt inputs -------------------------------------------------------------------------

/// A model dir in a tempdir holding a valid config.json.
fn model_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        fixture("tiny-llama3-bf16/config.json"),
        d.path().join("config.json"),
    )
    .unwrap();
    d
}

/// A safetensors file from a header JSON string (unpadded) and `data` bytes.
fn st_bytes(header: &str, data: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data));
    v
}

/// Opens a dir whose model.safetensors is `bytes`; returns the error message.
fn open_err(bytes: &[u8]) -> String {
    let d = model_dir();
    fs::write(d.path().join("model.safetensors"), bytes).unwrap();
    let e = Checkpoint::open(d.path()).unwrap_err().to_string();
    assert!(!e.contains('\n'), "multi-line error: {e}");
    assert!(
        e.contains("model.safetensors"),
        "error does not name the file: {e}"
    );
    e
}

const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#;

#[test]
fn synthetic_good_file_opens() {
    let d = model_dir();
    fs::write(d.path().join("model.safetensors"), st_bytes(GOOD, 20)).unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    let names: Vec<_> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(ck.data(ck.get("b").unwrap()).len(), 8);
}

#[test]
fn rejects_bad_header_length() {
    let mut b = st_bytes(GOOD, 20);
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open_err(&b).contains("invalid header length"));
    assert!(open_err(&[1, 2, 3]).contains("too short"));
}

#[test]
fn rejects_header_past_eof() {
    let mut b = st_bytes(GOOD, 20);
    let n = b.len() as u64; // header claims more bytes than the file holds
    b[..8].copy_from_slice(&n.to_le_bytes());
    assert!(open_err(&b).contains("past the end of the file"));
}

#[test]
fn rejects_invalid_json() {
    let e = open_err(&st_bytes(&GOOD.replace("},\"b\"", "},,\"b\""), 20));
    assert!(e.contains("not a valid JSON"), "{e}");
    let e = open_err(&st_bytes("[1,2]   ", 0));
    assert!(e.contains("header does not start with '{'"), "{e}");
}

#[test]
fn rejects_unknown_dtype() {
    let e = open_err(&st_bytes(&GOOD.replace("\"F32\"", "\"F31\""), 20));
    assert!(e.contains("b: unknown dtype F31"), "{e}");
}

#[test]
fn rejects_offsets_past_eof() {
    let e = open_err(&st_bytes(GOOD, 19));
    assert!(
        e.contains("b: data_offsets [12, 20] run past the end"),
        "{e}"
    );
    // The real fixture truncated by one byte.
    let mut real = fs::read(fixture("tiny-llama3-bf16/model.safetensors")).unwrap();
    real.pop();
    let e = open_err(&real);
    assert!(e.contains("run past the end"), "{e}");
}

#[test]
fn rejects_overlapping_offsets() {
    let h = GOOD.replace("[12,20]", "[8,16]");
    let e = open_err(&st_bytes(&h, 20));
    assert!(e.contains("b: data_offsets [8, 16] start at 8"), "{e}");
    assert!(
        e.contains("previous tensor ends at 12: they overlap"),
        "{e}"
    );
}

#[test]
fn rejects_wrong_byte_length() {
    let e = open_err(&st_bytes(&GOOD.replace("[2,3]", "[2,4]"), 20));
    assert!(
        e.contains("a: data_offsets [0, 12] hold 12 bytes but BF16 [2, 4] needs 16"),
        "{e}"
    );
    let e = open_err(&st_bytes(&GOOD.replace("[0,12]", "[12,0]"), 20));
    assert!(e.contains("a: data_offsets [12, 0] end before"), "{e}");
}

#[test]
fn rejects_bad_entries() {
    let e = open_err(&st_bytes(&GOOD.replace("[2,3]", "[2,-3]"), 20));
    assert!(e.contains("a: shape is not a list"), "{e}");
    let e = open_err(&st_bytes(
        &GOOD.replace("{\"format\":\"pt\"}", "{\"n\":1}"),
        20,
    ));
    assert!(e.contains("__metadata__"), "{e}");
}

fn err_of(dir: &Path) -> String {
    let e = Checkpoint::open(dir).unwrap_err().to_string();
    assert!(!e.contains('\n'), "multi-line error: {e}");
    e
}

#[test]
fn rejects_missing_or_invalid_config() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("model.safetensors"), st_bytes(GOOD, 20)).unwrap();
    let e = err_of(d.path());
    assert!(e.contains("config.json: not found"), "{e}");
    fs::write(d.path().join("config.json"), "{\"a\": 1,}").unwrap();
    let e = err_of(d.path());
    assert!(e.contains("config.json: invalid JSON"), "{e}");
    fs::write(d.path().join("config.json"), "[1]").unwrap();
    assert!(err_of(d.path()).contains("config.json: not a JSON object"));
}

#[test]
fn rejects_dir_without_safetensors() {
    let d = model_dir();
    fs::write(d.path().join("pytorch_model.bin"), b"x").unwrap();
    let e = err_of(d.path());
    assert!(e.contains("no *.safetensors files"), "{e}");
    assert!(err_of(&d.path().join("nope")).contains("not a directory"));
}

#[test]
fn rejects_tensor_in_two_files() {
    let d = model_dir();
    fs::write(d.path().join("a.safetensors"), st_bytes(GOOD, 20)).unwrap();
    fs::write(d.path().join("b.safetensors"), st_bytes(GOOD, 20)).unwrap();
    let e = err_of(d.path());
    assert!(e.contains("b.safetensors: tensor a is also in"), "{e}");
    assert!(e.contains("a.safetensors"), "{e}");
}

#[test]
fn index_names_the_shards() {
    let d = model_dir();
    let second = r#"{"c":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#;
    fs::write(d.path().join("s1.safetensors"), st_bytes(GOOD, 20)).unwrap();
    fs::write(d.path().join("s2.safetensors"), st_bytes(second, 3)).unwrap();
    // A stray file the index does not name is ignored.
    fs::write(d.path().join("stray.safetensors"), b"junk").unwrap();
    let idx = r#"{"metadata":{"total_size":23},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}"#;
    let ip = d.path().join("model.safetensors.index.json");
    fs::write(&ip, idx).unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    assert_eq!(ck.files().len(), 2);
    assert_eq!(ck.get("c").unwrap().file, 1);
    // An index entry pointing at the wrong shard.
    fs::write(&ip, idx.replace("\"c\":\"s2", "\"c\":\"s1")).unwrap();
    let e = err_of(d.path());
    assert!(e.contains("tensor c is not in s1.safetensors"), "{e}");
    // An index naming a missing shard.
    fs::write(&ip, idx.replace("\"c\":\"s2", "\"c\":\"s3")).unwrap();
    let e = err_of(d.path());
    assert!(e.contains("s3.safetensors: shard not found"), "{e}");
}

// ---- the safetensors layout rules (issue #20: found by fuzzing) ----------------------------

/// The real fixture's bytes with the header length (first 8 bytes) changed by `delta`.
fn fixture_with_header_len(delta: i64) -> Vec<u8> {
    let mut b = fs::read(fixture("tiny-llama3-bf16/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap());
    b[..8].copy_from_slice(&(n as i64 + delta).to_le_bytes());
    b
}

#[test]
fn rejects_header_length_cutting_the_padding() {
    // The header ends in padding spaces, so a length 2 short still parses as JSON; every
    // tensor would then be read one BF16 element early.
    let e = open_err(&fixture_with_header_len(-2));
    assert!(e.contains("data area holds 6377794 bytes"), "{e}");
    assert!(e.contains("end at 6377792"), "{e}");
}

#[test]
fn rejects_junk_after_the_last_tensor() {
    let mut b = st_bytes(GOOD, 20);
    b.extend(std::iter::repeat_n(0xAB, 4096));
    let e = open_err(&b);
    assert!(e.contains("end at 20"), "{e}");
    assert!(e.contains("4096 bytes after the last tensor"), "{e}");
}

#[test]
fn rejects_a_hole_between_tensors() {
    let h = GOOD.replace("[12,20]", "[4108,4116]");
    let e = open_err(&st_bytes(&h, 4116));
    assert!(e.contains("b: data_offsets [4108, 4116]"), "{e}");
    assert!(e.contains("previous tensor ends at 12"), "{e}");
}

#[test]
fn rejects_a_header_not_starting_with_a_brace() {
    let e = open_err(&st_bytes(&format!("  {GOOD}"), 20));
    assert!(e.contains("header does not start with '{'"), "{e}");
}

#[test]
fn rejects_a_duplicated_tensor_key() {
    // The second "a" (same offsets) would silently replace the first.
    let h = GOOD.replace(
        ",\"b\"",
        ",\"a\":{\"dtype\":\"U8\",\"shape\":[12],\"data_offsets\":[0,12]},\"b\"",
    );
    let e = open_err(&st_bytes(&h, 20));
    assert!(e.contains("key \"a\" appears twice"), "{e}");
}

// ---- inputs that are not regular files ------------------------------------------------------

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Runs `f` on another thread; fails (rather than hanging the suite) if it blocks.
fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("blocked reading a FIFO")
}

#[test]
fn refuses_a_fifo_config() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("model.safetensors"), st_bytes(GOOD, 20)).unwrap();
    mkfifo(&d.path().join("config.json"));
    let dir = d.path().to_path_buf();
    let e = within_5s(move || err_of(&dir));
    assert!(
        e.contains("config.json: is a FIFO, not a regular file"),
        "{e}"
    );
}

#[test]
fn refuses_a_fifo_shard_or_index() {
    let d = model_dir();
    mkfifo(&d.path().join("s1.safetensors"));
    let ip = d.path().join("model.safetensors.index.json");
    fs::write(&ip, r#"{"weight_map":{"a":"s1.safetensors"}}"#).unwrap();
    let dir = d.path().to_path_buf();
    let e = within_5s(move || err_of(&dir));
    assert!(e.contains("s1.safetensors: is a FIFO"), "{e}");
    fs::remove_file(&ip).unwrap();
    mkfifo(&ip);
    let dir = d.path().to_path_buf();
    let e = within_5s(move || err_of(&dir));
    assert!(e.contains("index.json: is a FIFO"), "{e}");
}
