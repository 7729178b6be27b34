//! Mutation fuzzing of the safetensors reader against the reference implementation: every
//! mutated file that `Checkpoint::open` accepts, `safetensors::SafeTensors::deserialize`
//! accepts too, with the same tensors at the same byte offsets; every file it refuses gets a
//! one-line error naming the file, and when the crate accepts such a file the refusal is one
//! of qforge's three extra rules (header starts with `{`, no duplicate key, supported dtype).
//!
//! Seeds: a small synthetic file and real fixtures (BF16, FP8, packed INT4, NVFP4).
//! Cases: `QFORGE_FUZZ_CASES` (default 256); see `scripts/fuzz.sh`.

use super::util::{apply, assert_one_line, byte_op, config, json_op, ByteOp, JsonOp};
use crate::support;
use proptest::prelude::*;
use proptest::sample::Index;
use qforge::checkpoint::Checkpoint;
use safetensors::SafeTensors;
use serde_json::{Map, Value};
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

const SMALL: &str = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},"c":{"dtype":"U8","shape":[0],"data_offsets":[20,20]}}"#;

/// A file from header JSON text, padded with spaces to a multiple of 8 as Python writes it.
fn file_of(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend(h);
    v.extend_from_slice(data);
    v
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let small: Vec<u8> = (0..20u8).collect();
        let shared = support::shared().join("fixtures");
        let mut out = vec![file_of(SMALL, &small)];
        for p in [
            support::bundled_model().join("model.safetensors"),
            shared.join("tiny-tied-fp8-dynamic/model.safetensors"),
            shared.join("schemes/g128-W4A16_ASYM/model.safetensors"),
            shared.join("schemes/g128-NVFP4A16/model.safetensors"),
        ] {
            out.push(fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        }
        out
    })
}

fn header_len(b: &[u8]) -> usize {
    u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

/// A mutation that knows the format.
#[derive(Debug, Clone)]
enum StOp {
    /// Raw bytes, inside the length prefix and header (plus a little data) only.
    Bytes(Vec<ByteOp>),
    /// The 8-byte header length moved by a few bytes (the original fuzz finding).
    HeaderLen(i64),
    /// Generic JSON edits of the header, re-serialized with a correct length.
    Json(Vec<JsonOp>),
    /// One tensor's data_offsets shifted.
    Offsets(Index, i64, i64),
    /// One tensor's dtype renamed (to known, crate-only and unknown names).
    Dtype(Index, &'static str),
    /// One tensor's entry written twice.
    DupKey(Index),
    /// Bytes appended to or cut from the end of the data.
    Tail(i64),
    /// Spaces before the header's `{`.
    LeadingSpace,
}

const DTYPES: &[&str] = &[
    "BF16",
    "F16",
    "F32",
    "F64",
    "U8",
    "I8",
    "I32",
    "I64",
    "BOOL",
    "F8_E4M3",
    "F8_E8M0",
    "F4",
    "C64",
    "F8_E4M3FNUZ",
    "bf16",
    "X",
];

fn st_op() -> impl Strategy<Value = StOp> {
    let delta = prop_oneof![-16i64..=16, Just(-4096), Just(4096)];
    prop_oneof![
        4 => prop::collection::vec(byte_op(), 1..4).prop_map(StOp::Bytes),
        2 => delta.clone().prop_map(StOp::HeaderLen),
        2 => prop::collection::vec(json_op(), 1..3).prop_map(StOp::Json),
        3 => (any::<Index>(), delta.clone(), delta.clone()).prop_map(|(i, s, e)| StOp::Offsets(i, s, e)),
        2 => (any::<Index>(), prop::sample::select(DTYPES)).prop_map(|(i, d)| StOp::Dtype(i, d)),
        1 => any::<Index>().prop_map(StOp::DupKey),
        2 => delta.prop_map(StOp::Tail),
        1 => Just(StOp::LeadingSpace),
    ]
}

/// Splits a file into its header (parsed) and data.
fn split(b: &[u8]) -> (Map<String, Value>, &[u8]) {
    let n = header_len(b);
    (serde_json::from_slice(&b[8..8 + n]).unwrap(), &b[8 + n..])
}

/// Applies `f` to the header's `i`-th tensor entry and rewrites the file.
fn edit_entry(b: &[u8], i: &Index, f: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let (mut h, data) = split(b);
    let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    if let Some(Value::Object(e)) = h.get_mut(&names[i.index(names.len())]) {
        f(e);
    }
    file_of(&serde_json::to_string(&h).unwrap(), data)
}

fn shift(v: &Value, d: i64) -> Value {
    Value::from(v.as_i64().unwrap_or(0).saturating_add(d).max(0))
}

fn apply_op(b: Vec<u8>, op: &StOp) -> Vec<u8> {
    // Each op assumes the seed's structure; after a structure-breaking op the later ones
    // fall back to raw bytes (so a JSON op never sees a broken header).
    let parsable = b.len() >= 8
        && header_len(&b) <= b.len() - 8
        && serde_json::from_slice::<Map<String, Value>>(&b[8..8 + header_len(&b)]).is_ok();
    match op {
        StOp::Bytes(ops) => {
            let mut b = b;
            let limit = if b.len() >= 8 {
                header_len(&b).saturating_add(24)
            } else {
                8
            };
            apply(&mut b, ops, Some(limit));
            b
        }
        StOp::HeaderLen(d) if b.len() >= 8 => {
            let mut b = b;
            let n = (header_len(&b) as i64).saturating_add(*d).max(0) as u64;
            b[..8].copy_from_slice(&n.to_le_bytes());
            b
        }
        StOp::Json(ops) if parsable => {
            let (h, data) = split(&b);
            let mut v = Value::Object(h);
            super::util::apply_json(&mut v, ops);
            file_of(&serde_json::to_string(&v).unwrap(), data)
        }
        StOp::Offsets(i, ds, de) if parsable => edit_entry(&b, i, |e| {
            if let Some(Value::Array(o)) = e.get_mut("data_offsets") {
                if o.len() == 2 {
                    o[0] = shift(&o[0], *ds);
                    o[1] = shift(&o[1], *de);
                }
            }
        }),
        StOp::Dtype(i, d) if parsable => edit_entry(&b, i, |e| {
            e.insert("dtype".into(), Value::from(*d));
        }),
        StOp::DupKey(i) if parsable => {
            let (h, data) = split(&b);
            let names: Vec<&String> = h.keys().collect();
            let k = names[i.index(names.len())];
            let text = serde_json::to_string(&h).unwrap();
            let dup = format!("{{{}:{},", Value::from(k.as_str()), h[k]);
            file_of(&text.replacen('{', &dup, 1), data)
        }
        StOp::Tail(d) => {
            let mut b = b;
            if *d >= 0 {
                b.extend(std::iter::repeat_n(0x5A, *d as usize));
            } else {
                b.truncate(b.len().saturating_sub(d.unsigned_abs() as usize));
            }
            b
        }
        StOp::LeadingSpace if parsable => {
            let (h, data) = split(&b);
            file_of(&format!("  {}", serde_json::to_string(&h).unwrap()), data)
        }
        _ => b,
    }
}

/// The oracle: qforge and the safetensors crate agree, up to qforge's extra rules.
fn check(bytes: &[u8]) {
    let d = tempfile::tempdir().unwrap();
    fs::copy(
        support::bundled_model().join("config.json"),
        d.path().join("config.json"),
    )
    .unwrap();
    let path: PathBuf = d.path().join("model.safetensors");
    fs::write(&path, bytes).unwrap();
    let ours = Checkpoint::open(d.path());
    let theirs = SafeTensors::deserialize(bytes);
    match (ours, theirs) {
        (Ok(ck), Ok(st)) => {
            assert_eq!(ck.tensors().len(), st.len());
            let map = fs::read(&path).unwrap();
            for t in ck.tensors() {
                let v = st.tensor(&t.name).expect("same tensor names");
                assert_eq!(v.shape(), &t.shape[..], "{}", t.name);
                assert_eq!(v.dtype().to_string(), t.dtype.to_string(), "{}", t.name);
                let start = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
                assert_eq!(
                    (start, start + v.data().len()),
                    (t.start, t.end),
                    "{}",
                    t.name
                );
                assert_eq!(ck.data(t), &map[t.start..t.end]);
            }
        }
        (Ok(_), Err(e)) => panic!("qforge accepted a file the safetensors crate refuses: {e}"),
        (Err(e), theirs) => {
            let e = e.to_string();
            assert_one_line(&e);
            assert!(e.contains("model.safetensors"), "{e}");
            if theirs.is_ok() {
                let extra = [
                    "appears twice",
                    "does not start with '{'",
                    "not supported by qforge",
                ];
                assert!(
                    extra.iter().any(|x| e.contains(x)),
                    "refused a file the safetensors crate accepts: {e}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256, 1))]

    #[test]
    fn safetensors_agrees_with_the_crate(
        seed in 0..5usize,
        ops in prop::collection::vec(st_op(), 1..4),
    ) {
        let mut b = seeds()[seed].clone();
        for op in &ops {
            b = apply_op(b, op);
        }
        check(&b);
    }
}

/// The seeds themselves open (so the fuzzing starts from valid files), and the original
/// finding — the header length lowered by 2 into the padding — is refused on each of them.
#[test]
fn seeds_open_and_the_padding_cut_is_refused() {
    for s in seeds() {
        check(s);
        assert!(SafeTensors::deserialize(s).is_ok());
        let cut = apply_op(s.clone(), &StOp::HeaderLen(-2));
        assert!(SafeTensors::deserialize(&cut).is_err());
        check(&cut);
    }
}
