//! Mutation fuzzing of the tokenizer and chat-template files through the runtime's loaders:
//! `chat_template.jinja` (real models' templates), `tokenizer_config.json` and
//! `tokenizer.json`, each mutated in a copy of the bundled model's tokenizer files, then
//! loaded and used (render a conversation; encode and decode text). Promise: no panic and no
//! hang; either a one-line error or a working tokenizer / template.

use super::util::{apply, assert_one_line, byte_op, config, mutate, mutation, ByteOp};
use crate::support;
use proptest::prelude::*;
use proptest::sample::Index;
use qforge::runtime::chat::ChatTemplate;
use qforge::runtime::tokenizer::TextTokenizer;
use serde_json::{json, Map};
use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "config.json",
];

/// A model dir with the bundled model's tokenizer files and `name` = `bytes`.
fn model_dir(name: &str, bytes: &[u8]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in FILES {
        fs::copy(support::bundled_model().join(f), d.path().join(f)).unwrap();
    }
    fs::write(d.path().join(name), bytes).unwrap();
    d
}

fn templates() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = support::shared().join("fixtures/chat-templates");
        let mut paths: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
            .collect();
        paths.sort();
        paths.iter().map(|p| fs::read(p).unwrap()).collect()
    })
}

/// Loads the template and renders a conversation; checks time and error shape.
fn render_in(dir: &Path) {
    let t0 = Instant::now();
    let out = ChatTemplate::load(dir).and_then(|t| {
        let Some(t) = t else { return Ok(String::new()) };
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}
        ]);
        t.render(&messages, None, true, &Map::new())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    if let Err(e) = out {
        assert_one_line(&e.to_string());
    }
}

/// Loads the tokenizer and round-trips some text.
fn tokenize_in(dir: &Path) {
    match TextTokenizer::load(dir) {
        Ok(tok) => {
            for text in ["Hello world", "  ünïcødé\n\t<|im_start|>", ""] {
                match tok.encode(text, true) {
                    Ok(ids) => {
                        if let Err(e) = tok.decode(&ids) {
                            assert_one_line(&e.to_string());
                        }
                    }
                    Err(e) => assert_one_line(&e.to_string()),
                }
            }
        }
        Err(e) => assert_one_line(&e.to_string()),
    }
}

const JINJA_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{% endfor %}",
    "{% endif %}",
    "{% raw %}",
    "|tojson",
    "|length",
    "|int",
    "[0]",
    "[-1]",
    ".content",
    "loop.index",
    "raise_exception('x')",
    "messages",
    "none",
    "'",
    "\"",
    "\\",
    "(",
    ")",
    "~",
    "[::-1]",
    "{% set x = 1 %}",
];

#[derive(Debug, Clone)]
enum JinjaOp {
    Bytes(Vec<ByteOp>),
    Token(Index, &'static str),
}

fn jinja_op() -> impl Strategy<Value = JinjaOp> {
    prop_oneof![
        prop::collection::vec(byte_op(), 1..3).prop_map(JinjaOp::Bytes),
        (any::<Index>(), prop::sample::select(JINJA_TOKENS))
            .prop_map(|(i, t)| JinjaOp::Token(i, t)),
    ]
}

proptest! {
    #![proptest_config(config(256, 1))]

    #[test]
    fn chat_template_mutations_end_cleanly(
        seed in any::<Index>(),
        ops in prop::collection::vec(jinja_op(), 1..4),
    ) {
        let seeds = templates();
        let mut t = seeds[seed.index(seeds.len())].clone();
        for op in &ops {
            match op {
                JinjaOp::Bytes(b) => apply(&mut t, b, None),
                JinjaOp::Token(i, s) => {
                    let p = i.index(t.len() + 1);
                    t.splice(p..p, s.bytes());
                }
            }
        }
        render_in(model_dir("chat_template.jinja", &t).path());
    }
}

proptest! {
    #![proptest_config(config(24, 20))]

    #[test]
    fn tokenizer_config_mutations_end_cleanly(m in mutation()) {
        let seed = fs::read(support::bundled_model().join("tokenizer_config.json")).unwrap();
        let d = model_dir("tokenizer_config.json", &mutate(&seed, &m));
        render_in(d.path());
        tokenize_in(d.path());
    }
}

proptest! {
    #![proptest_config(config(12, 50))]

    /// tokenizer.json is 3.5 MB: few cases by default, each a full parse.
    #[test]
    fn tokenizer_json_mutations_end_cleanly(m in mutation()) {
        static SEED: OnceLock<Vec<u8>> = OnceLock::new();
        let seed = SEED.get_or_init(|| fs::read(support::bundled_model().join("tokenizer.json")).unwrap());
        tokenize_in(model_dir("tokenizer.json", &mutate(seed, &m)).path());
    }
}

#[test]
fn seeds_render_and_tokenize() {
    for t in templates() {
        let d = model_dir("chat_template.jinja", t);
        assert!(ChatTemplate::load(d.path()).unwrap().is_some());
        render_in(d.path());
    }
    let d = model_dir("chat_template.jinja", &templates()[0]);
    let tok = TextTokenizer::load(d.path()).unwrap();
    let ids = tok.encode("Hello world", false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "Hello world");
}
