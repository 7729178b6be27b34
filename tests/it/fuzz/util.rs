//! Shared pieces of the mutation fuzz tests (`tests/fuzz_*.rs`): case counts, byte-level and
//! JSON-level mutations of seed files, and the one-line-error check.
//!
//! Each target runs a few hundred cases by default (a few dozen for slow ones), so the whole
//! set takes well under a minute on 2 cores; `QFORGE_FUZZ_CASES=N` (or `scripts/fuzz.sh N`)
//! runs N cases per target (fewer for the slow ones, see [`config`]).
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_json::Value;

/// proptest settings: `default` cases, or `QFORGE_FUZZ_CASES / cost` when that is set
/// (`cost` > 1 for targets whose case is slow, e.g. a 3.5 MB tokenizer parse, so one number
/// gives every target a similar share of time); no regression files written into the source
/// tree (a failure prints its shrunk input).
pub fn config(default: u32, cost: u32) -> Config {
    let cases = std::env::var("QFORGE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(default, |n| (n / cost).max(1));
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

/// Asserts an error message is one line and not a panic's or a debug dump.
pub fn assert_one_line(e: &str) {
    assert!(!e.is_empty(), "empty error message");
    assert!(!e.contains('\n'), "multi-line error: {e}");
}

/// Values that tend to break parsers and size arithmetic.
pub const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "255",
    "65536",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "1e999",
    "0.5",
    "-0",
    "NaN",
];

/// One byte-level edit; indices are fractions of the current length.
#[derive(Debug, Clone)]
pub enum ByteOp {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    Append(Vec<u8>),
    /// Copies a chunk somewhere else (duplicates keys, entries, lines).
    Copy(Index, usize, Index),
    /// Replaces the digit run at or after the index with an interesting number.
    Number(Index, usize),
}

/// JSON punctuation and other bytes worth inserting.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b" ",
    b"\n",
    b"null",
    b"\xff\xfe",
    b"\0",
];

pub fn byte_op() -> impl Strategy<Value = ByteOp> {
    let small = prop::collection::vec(any::<u8>(), 1..8);
    let tokens = prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec);
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| ByteOp::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteOp::Set(i, b)),
        (any::<Index>(), prop_oneof![small.clone(), tokens])
            .prop_map(|(i, v)| ByteOp::Insert(i, v)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| ByteOp::Delete(i, n)),
        any::<Index>().prop_map(ByteOp::Truncate),
        small.prop_map(ByteOp::Append),
        (any::<Index>(), 1usize..64, any::<Index>()).prop_map(|(a, n, b)| ByteOp::Copy(a, n, b)),
        (any::<Index>(), 0..NUMBERS.len()).prop_map(|(i, n)| ByteOp::Number(i, n)),
    ]
}

/// Applies `ops` to `bytes` in order, only inside `bytes[..limit]` when `limit` is given
/// (so a 6 MB file's mutations land in its header) except for `Truncate` and `Append`.
pub fn apply(bytes: &mut Vec<u8>, ops: &[ByteOp], limit: Option<usize>) {
    for op in ops {
        let len = limit.unwrap_or(bytes.len()).min(bytes.len());
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        match op {
            ByteOp::Flip(i, b) if len > 0 => bytes[at(i)] ^= 1 << b,
            ByteOp::Set(i, b) if len > 0 => bytes[at(i)] = *b,
            ByteOp::Insert(i, v) => {
                let p = at(i);
                bytes.splice(p..p, v.iter().copied());
            }
            ByteOp::Delete(i, n) if len > 0 => {
                let p = at(i);
                bytes.drain(p..(p + n).min(len));
            }
            ByteOp::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
            ByteOp::Append(v) => bytes.extend_from_slice(v),
            ByteOp::Copy(a, n, b) if len > 0 => {
                let (s, d) = (at(a), at(b));
                let chunk = bytes[s..(s + n).min(len)].to_vec();
                bytes.splice(d..d, chunk);
            }
            ByteOp::Number(i, n) if len > 0 => {
                let start = at(i);
                if let Some(p) = bytes[start..len].iter().position(u8::is_ascii_digit) {
                    let p = start + p;
                    let end = bytes[p..len]
                        .iter()
                        .position(|c| !c.is_ascii_digit())
                        .map_or(len, |q| p + q);
                    bytes.splice(p..end, NUMBERS[*n].bytes());
                }
            }
            _ => {}
        }
    }
}

/// JSON values to put in place of an existing one.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(NUMBERS).prop_filter_map("json number", |n| n.parse().ok()),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z_.<>|/ ]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One JSON-level edit at a node chosen by index among all nodes (pre-order).
#[derive(Debug, Clone)]
pub enum JsonOp {
    Replace(Index, Value),
    Remove(Index),
    AddKey(Index, String, Value),
}

pub fn json_op() -> impl Strategy<Value = JsonOp> {
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonOp::Replace(i, v)),
        2 => any::<Index>().prop_map(JsonOp::Remove),
        1 => (any::<Index>(), "[a-z_]{1,12}", json_value()).prop_map(|(i, k, v)| JsonOp::AddKey(i, k, v)),
    ]
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(m) => m.values().map(count).sum(),
        _ => 0,
    }
}

/// Calls `f` on the `n`-th node in pre-order; false when there are fewer nodes.
fn at_nth(v: &mut Value, n: &mut usize, f: &mut dyn FnMut(&mut Value)) -> bool {
    if *n == 0 {
        f(v);
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|c| at_nth(c, n, f)),
        Value::Object(m) => m.values_mut().any(|c| at_nth(c, n, f)),
        _ => false,
    }
}

fn edit(v: &mut Value, i: &Index, mut f: impl FnMut(&mut Value)) {
    let mut n = i.index(count(v));
    at_nth(v, &mut n, &mut f);
}

pub fn apply_json(v: &mut Value, ops: &[JsonOp]) {
    for op in ops {
        match op {
            JsonOp::Replace(i, x) => edit(v, i, |n| *n = x.clone()),
            JsonOp::Remove(i) => edit(v, i, |n| match n {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(i.index(m.len())).cloned().unwrap_or_default();
                    m.shift_remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(i.index(a.len()));
                }
                _ => {}
            }),
            JsonOp::AddKey(i, k, x) => edit(v, i, |n| {
                if let Value::Object(m) = n {
                    m.insert(k.clone(), x.clone());
                }
            }),
        }
    }
}
/// A seed mutated either at the byte level or (when it is JSON) at the JSON level.
#[derive(Debug, Clone)]
pub enum Mutation {
    Bytes(Vec<ByteOp>),
    Json(Vec<JsonOp>),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec(byte_op(), 1..5).prop_map(Mutation::Bytes),
        prop::collection::vec(json_op(), 1..4).prop_map(Mutation::Json),
    ]
}

/// `seed` with `m` applied (a JSON mutation of a non-JSON seed leaves it unchanged).
pub fn mutate(seed: &[u8], m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Bytes(ops) => {
            let mut b = seed.to_vec();
            apply(&mut b, ops, None);
            b
        }
        Mutation::Json(ops) => match serde_json::from_slice::<Value>(seed) {
            Ok(mut v) => {
                apply_json(&mut v, ops);
                serde_json::to_vec_pretty(&v).unwrap()
            }
            Err(_) => seed.to_vec(),
        },
    }
}
