//! Python-exact JSON against files Python wrote: every config.json of the fixtures and the
//! tokenizer_config.json transformers wrote for the tiny models.

use crate::support::fixture;

use qforge::format::{self, pyjson};
use serde_json::Value;
use std::path::Path;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn tokenizer_config_is_byte_identical() {
    for model in ["tiny-llama3", "tiny-tied"] {
        let src = parse(&read(&fixture(&format!(
            "{model}-bf16/tokenizer_config.json"
        ))));
        assert!(
            src.get("chat_template").is_some(),
            "the source holds the template"
        );
        let want = read(&fixture(&format!(
            "{model}-fp8-dynamic/tokenizer_config.json"
        )));
        assert_eq!(format::tokenizer_config(&src), want, "{model}");
    }
}

/// Every config.json that Python's `json.dump(indent=2, sort_keys=True)` wrote re-dumps to
/// the same bytes (floats such as 1e-05, 500000.0, 0.0; nested sorting; `[]`, `{}`).
#[test]
fn python_written_configs_redump_identically() {
    let mut files = vec![
        fixture("tiny-llama3-fp8-dynamic/config.json"),
        fixture("tiny-tied-fp8-dynamic/config.json"),
    ];
    for entry in std::fs::read_dir(fixture("schemes")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.ends_with("g128-bf16") && !dir.ends_with("unaligned-bf16") && dir.is_dir() {
            files.push(dir.join("config.json"));
        }
    }
    assert!(files.len() >= 15, "{files:?}");
    for file in files {
        let text = read(&file);
        assert_eq!(
            pyjson::dumps(&parse(&text), true),
            text,
            "{}",
            file.display()
        );
    }
}

#[test]
fn classic_style_source_config_keeps_its_keys_and_floats() {
    // tiny-llama3's source is unsorted, transformers-4 style: the output sorts it and keeps
    // rope_scaling / rope_theta / torch_dtype and the float spellings.
    let src = parse(&read(&fixture("tiny-llama3-bf16/config.json")));
    let out = format::model_config(&src, &Value::Null);
    for line in [
        "  \"rms_norm_eps\": 1e-05,",
        "  \"rope_theta\": 500000.0,",
        "    \"factor\": 8.0,",
        "  \"attention_dropout\": 0.0,",
        "  \"torch_dtype\": \"bfloat16\",",
    ] {
        assert!(out.contains(&format!("{line}\n")), "{line}");
    }
    assert!(out.find("\"pad_token_id\"") < out.find("\"pretraining_tp\""));
    assert!(!out.ends_with('\n'));
}

#[test]
fn ensure_ascii_switch() {
    let v = parse(r#"{"name": "café ☕ 𝄞", "k": [1, -2.5e-7, 1e300, 12345678901234567890]}"#);
    let ascii = pyjson::dumps(&v, true);
    assert!(
        ascii.contains(r#""name": "caf\u00e9 \u2615 \ud834\udd1e""#),
        "{ascii}"
    );
    assert!(
        ascii.contains("-2.5e-07,\n    1e+300,\n    12345678901234567890\n"),
        "{ascii}"
    );
    assert!(pyjson::dumps(&v, false).contains("\"name\": \"café ☕ 𝄞\""));
}
