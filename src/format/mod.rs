//! Byte-exact output formats: JSON and YAML as Python writes them ([`pyjson`], [`pyyaml`]) and the small files
//! llm-compressor / transformers write next to a quantized checkpoint.

pub mod pyjson;
pub mod pyyaml;

use serde_json::Value;

/// The `tokenizer_config.json` that transformers' `save_pretrained` writes for a local
/// source: the source dict minus `chat_template` (saved as `chat_template.jinja` instead),
/// plus `"is_local": true` and `"local_files_only": false`, as
/// `json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"`.
/// A source that is not a JSON object is written unchanged in that style.
pub fn tokenizer_config(src: &Value) -> String {
    let mut dict = src.clone();
    if let Value::Object(map) = &mut dict {
        map.shift_remove("chat_template");
        map.insert("is_local".into(), Value::Bool(true));
        map.insert("local_files_only".into(), Value::Bool(false));
    }
    let mut out = pyjson::dumps(&dict, false);
    out.push('\n');
    out
}

/// `config.json` as llm-compressor writes it: the source config with `quantization_config`
/// added (replacing any existing one), `json.dump(cfg, indent=2, sort_keys=True)`, ASCII
/// escaped, no trailing newline.
///
/// llm-compressor's `resave_config` first patches `tie_word_embeddings`,
/// `torch_dtype`/`dtype` and the MoE expert counts from the loaded model; for a data-free
/// scheme that leaves `lm_head` alone those values equal the source's. When the source
/// lacks `tie_word_embeddings` or both dtype keys, llm-compressor falls back to
/// transformers' own re-serialisation of the config, which this does not reproduce.
pub fn model_config(src: &Value, quantization_config: &Value) -> String {
    let mut cfg = src.clone();
    if let Value::Object(map) = &mut cfg {
        map.insert("quantization_config".into(), quantization_config.clone());
    }
    pyjson::dumps(&cfg, true)
}
