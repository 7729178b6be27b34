//! Chat templates render byte for byte as transformers renders them
//! (`shared/fixtures/chat-templates`: 4 published templates × 18 conversations = 54 renders).

use crate::support;

use std::path::{Path, PathBuf};

use qforge::runtime::chat::{user_prompt, ChatTemplate};
use serde_json::{json, Map, Value};

fn fixtures() -> PathBuf {
    support::shared().join("fixtures/chat-templates")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compiles `<name>.jinja` with the special tokens of `<name>.json`; returns it and the
/// template's `extra_context`.
fn template(name: &str) -> (ChatTemplate, Map<String, Value>) {
    let meta = read_json(&fixtures().join(format!("{name}.json")));
    let file = meta["template_file"].as_str().expect("template_file");
    let src = std::fs::read_to_string(fixtures().join(file)).expect("template source");
    assert_eq!(
        src.len() as u64,
        meta["template_bytes"].as_u64().unwrap(),
        "{name}: size"
    );
    let t = ChatTemplate::from_str(&src, meta["bos_token"].as_str(), meta["eos_token"].as_str())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let extra = meta["extra_context"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    (t, extra)
}

fn render_case(
    t: &ChatTemplate,
    extra: &Map<String, Value>,
    case: &Value,
) -> qforge::Result<String> {
    let mut ctx = extra.clone();
    if let Some(kw) = case.get("kwargs").and_then(Value::as_object) {
        ctx.extend(kw.clone());
    }
    let gen = case["add_generation_prompt"]
        .as_bool()
        .expect("add_generation_prompt");
    t.render(&case["messages"], case.get("tools"), gen, &ctx)
}

#[test]
fn all_54_renders_match_transformers() {
    let cases = read_json(&fixtures().join("cases.json"));
    let expected = read_json(&fixtures().join("expected.json"));
    let (mut total, mut errors, mut failures) = (0, 0, Vec::new());
    for (name, renders) in expected.as_object().expect("expected.json is an object") {
        let (t, extra) = template(name);
        for (case_name, want) in renders.as_object().expect("renders") {
            total += 1;
            let case = &cases["cases"][case_name];
            assert!(case.is_object(), "{case_name} missing from cases.json");
            let got = render_case(&t, &extra, case);
            match (want, got) {
                (Value::String(w), Ok(g)) if *w == g => {}
                (Value::String(w), Ok(g)) => {
                    failures.push(format!("{name}/{case_name}:\n want {w:?}\n  got {g:?}"))
                }
                (Value::String(_), Err(e)) => failures.push(format!("{name}/{case_name}: {e}")),
                (err, Ok(g)) => failures.push(format!(
                    "{name}/{case_name}: expected {err}, rendered {g:?}"
                )),
                (err, Err(e)) => {
                    errors += 1;
                    let py = err["error"].as_str().expect("error entry");
                    // A template's raise_exception message must come through unchanged.
                    if let Some(msg) = py.strip_prefix("TemplateError: ") {
                        if !e.to_string().contains(msg) {
                            failures.push(format!("{name}/{case_name}: error {e} lacks {msg:?}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((total, errors), (54, 4));
}

#[test]
fn raise_exception_message_is_the_error() {
    let (t, extra) = template("llama-3.1-8b-instruct");
    let cases = read_json(&fixtures().join("cases.json"));
    let err = render_case(&t, &extra, &cases["cases"]["llama_tools_no_user_error"])
        .expect_err("must fail")
        .to_string();
    assert!(
        err.ends_with(
            "template raised an exception: Cannot put tools in the first user message when there's no first user message!"
        ),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn smollm2_template_loads_from_model_dir() {
    let dir = support::shared().join("fixtures/smollm2-meta");
    let t = ChatTemplate::load(&dir)
        .unwrap()
        .expect("smollm2 has a chat template");
    let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        user_prompt(Some(&t), "What is the capital of France?").unwrap(),
        want
    );
    assert_eq!(user_prompt(None, "raw text").unwrap(), "raw text");
}

#[test]
fn template_from_tokenizer_config_string_and_list() {
    let src = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}";
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for field in [
        json!(src),
        json!([{"name": "tool_use", "template": "x"}, {"name": "default", "template": src}]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = json!({"bos_token": "<s>", "eos_token": {"content": "</s>", "special": true}, "chat_template": field});
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let t = ChatTemplate::load(dir.path()).unwrap().expect("template");
        assert_eq!(
            t.render(&msgs, None, false, &Map::new()).unwrap(),
            "<s>hi</s>"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>"}"#,
    )
    .unwrap();
    assert!(ChatTemplate::load(dir.path()).unwrap().is_none());
    let bad = json!({"chat_template": [{"name": "tool_use", "template": "x"}]});
    std::fs::write(dir.path().join("tokenizer_config.json"), bad.to_string()).unwrap();
    let err = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("default"),
        "{err}"
    );
}

#[test]
fn tojson_options_follow_python_json_dumps() {
    let t = ChatTemplate::from_str(
        "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(sort_keys=true, separators=[',', ':']) }}|{{ x|tojson(ensure_ascii=true) }}|{{ 'a'|tojson }}",
        None,
        None,
    )
    .unwrap();
    let mut extra = Map::new();
    extra.insert("x".into(), json!({"b": [1, 2.0, "é<&>'"], "a": {}}));
    let got = t.render(&json!([]), None, false, &extra).unwrap();
    // Each part as Python's json.dumps writes it.
    let want = [
        r#"{"b": [1, 2.0, "é<&>'"], "a": {}}"#,
        "{\n  \"b\": [\n    1,\n    2.0,\n    \"é<&>'\"\n  ],\n  \"a\": {}\n}",
        r#"{"a":{},"b":[1,2.0,"é<&>'"]}"#,
        r#"{"b": [1, 2.0, "\u00e9<&>'"], "a": {}}"#,
        r#""a""#,
    ]
    .join("|");
    assert_eq!(got, want);
}

#[test]
fn python_extras_and_generation_tag() {
    // strftime_now on the local clock: the year is four digits and today.
    let t = ChatTemplate::from_str("{{ strftime_now('%Y') }}", None, None).unwrap();
    let year = t.render(&json!([]), None, false, &Map::new()).unwrap();
    assert!(year.len() == 4 && year.starts_with("20"), "{year}");
    // `{% generation %}` (transformers' AssistantTracker) renders its body, whitespace rules kept.
    let src = "{% for m in messages %}\n  {% generation %}\n{{ m.content|upper }}{% endgeneration %}\n{% endfor %}";
    let t = ChatTemplate::from_str(src, None, None).unwrap();
    let msgs = json!([{"content": "a"}, {"content": "b"}]);
    assert_eq!(t.render(&msgs, None, false, &Map::new()).unwrap(), "AB");
    // Undefined special tokens stay undefined (Qwen2.5 has no bos_token).
    let t = ChatTemplate::from_str(
        "{{ bos_token is defined }}{{ tools is none }}",
        None,
        Some("e"),
    )
    .unwrap();
    assert_eq!(
        t.render(&json!([]), None, false, &Map::new()).unwrap(),
        "FalseTrue",
        "Python spelling, as jinja2 prints it"
    );
    // A syntax error is reported at compile time, one line.
    let err = ChatTemplate::from_str("{% if %}", None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot compile") && !err.contains('\n'),
        "{err}"
    );
}
