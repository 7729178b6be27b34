//! The tokenizer on the SmolLM2 files (`shared/fixtures/smollm2-meta`): golden prompt ids
//! (fixtures README §6.1), decoding, streaming, and EOS ids from the config files.

use crate::support;

use std::path::PathBuf;

use qforge::runtime::chat::{user_prompt, ChatTemplate};
use qforge::runtime::tokenizer::TextTokenizer;

const GOLDEN_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
const GOLDEN_IDS: [u32; 37] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
    198,
];

fn smollm2() -> PathBuf {
    support::shared().join("fixtures/smollm2-meta")
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::load(&smollm2()).expect("load smollm2 tokenizer")
}

#[test]
fn golden_prompt_renders_and_encodes() {
    let t = ChatTemplate::load(&smollm2()).unwrap().expect("template");
    let prompt = user_prompt(Some(&t), "What is the capital of France?").unwrap();
    assert_eq!(prompt, GOLDEN_PROMPT);
    let tok = tokenizer();
    assert_eq!(tok.encode(&prompt, false).unwrap(), GOLDEN_IDS);
    // The rendered template already holds its special tokens; decoding gives it back.
    assert_eq!(tok.decode(&GOLDEN_IDS).unwrap(), GOLDEN_PROMPT);
    let plain = tok.decode_with(&GOLDEN_IDS, true).unwrap();
    assert!(!plain.contains("<|im_start|>") && plain.contains("What is the capital of France?"));
}

#[test]
fn special_tokens_from_config_files() {
    let tok = tokenizer();
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.vocab_size(), 49152);
}

/// A model dir with SmolLM2's tokenizer.json and the given config files.
fn model_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        smollm2().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn eos_ids_union_list_form() {
    let dir = model_dir(&[
        (
            "generation_config.json",
            r#"{"bos_token_id": 1, "eos_token_id": [2, 0, 2]}"#,
        ),
        ("config.json", r#"{"eos_token_id": 5}"#),
        (
            "tokenizer_config.json",
            r#"{"eos_token": {"content": "<|endoftext|>"}, "bos_token": null}"#,
        ),
    ]);
    let tok = TextTokenizer::load(dir.path()).unwrap();
    // generation_config's list, then config.json's id, then the id of eos_token ("<|endoftext|>" = 0).
    assert_eq!(tok.eos_ids(), &[2, 0, 5]);
    assert_eq!(tok.eos_token(), Some("<|endoftext|>"));
    // No bos_token in tokenizer_config: taken from bos_token_id.
    assert_eq!(
        (tok.bos_id(), tok.bos_token()),
        (Some(1), Some("<|im_start|>"))
    );

    // Only config.json: eos from there, eos_token its text.
    let dir = model_dir(&[("config.json", r#"{"eos_token_id": [2]}"#)]);
    let tok = TextTokenizer::load(dir.path()).unwrap();
    assert_eq!(
        (tok.eos_ids(), tok.eos_token(), tok.bos_token()),
        (&[2u32][..], Some("<|im_end|>"), None)
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = TextTokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    let dir = model_dir(&[("generation_config.json", "{not json")]);
    let err = TextTokenizer::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

fn roundtrip(tok: &TextTokenizer, text: &str) {
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

#[test]
fn decode_round_trip() {
    let tok = tokenizer();
    roundtrip(
        &tok,
        "Hello, world! The quick brown fox.\n\tTabs and  spaces  ",
    );
    roundtrip(&tok, "Grüße! 你好, мир — “quotes” 😀");
    roundtrip(&tok, GOLDEN_PROMPT);
}

#[test]
fn streaming_decode_matches_full_decode() {
    let tok = tokenizer();
    let text = "Grüße! 你好, мир — “quotes” 😀🇫🇷 ok";
    let ids = tok.encode(text, false).unwrap();
    // The byte-level BPE splits some of these characters over several tokens.
    let split = ids
        .iter()
        .filter(|&&id| tok.decode(&[id]).unwrap().contains('\u{FFFD}'))
        .count();
    assert!(split > 0, "test needs a character split across tokens");
    let mut stream = tok.stream();
    let mut out = String::new();
    let mut pieces = 0;
    for &id in &ids {
        if let Some(piece) = stream.step(id).unwrap() {
            assert!(
                !piece.contains('\u{FFFD}'),
                "partial character in {piece:?}"
            );
            out.push_str(&piece);
            pieces += 1;
        }
    }
    assert_eq!(out, tok.decode(&ids).unwrap());
    assert_eq!(out, text);
    assert!(
        pieces < ids.len(),
        "split characters must wait for their last token"
    );
}
