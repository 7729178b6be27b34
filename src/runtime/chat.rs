//! Chat templates rendered the way transformers renders them.
//!
//! transformers compiles `chat_template` in a jinja2 `ImmutableSandboxedEnvironment` with
//! `trim_blocks=True, lstrip_blocks=True`, the `loopcontrols` extension, the globals
//! `raise_exception(msg)` and `strftime_now(fmt)`, and `tojson` replaced by Python's
//! `json.dumps(ensure_ascii=False)`. [`ChatTemplate`] mirrors that with minijinja plus
//! minijinja-contrib's `pycompat` (Python string/dict methods such as `.split`, `.items()`).

use std::error::Error as _;
use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::{Map, Value as Json};

use crate::runtime::tokenizer::{read_json_opt, special_tokens};
use crate::{Error, Result};

pub use crate::format::pyjson::{dumps_with as py_json_dumps, DumpOptions};

const NAME: &str = "chat_template";

/// A compiled chat template plus the special tokens it sees (`bos_token`, `eos_token`, …).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    specials: Vec<(String, String)>,
    /// Where the template came from, for error messages.
    origin: String,
}

impl ChatTemplate {
    /// Loads the model's chat template: `chat_template.jinja`, else `chat_template.json`, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of `{name, template}` from
    /// which `default` is taken). `Ok(None)` when the model has none. Special tokens come from
    /// `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn load(model_dir: &Path) -> Result<Option<Self>> {
        let Some((src, origin)) = find_template(model_dir)? else {
            return Ok(None);
        };
        let specials = special_tokens(model_dir)?;
        Self::build(&src, specials, origin).map(Some)
    }

    /// Compiles `src` with the given BOS/EOS token texts (`None` = the tokenizer has none, so
    /// the variable is undefined in the template, as in transformers).
    pub fn from_str(src: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let specials = [("bos_token", bos), ("eos_token", eos)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
            .collect();
        Self::build(src, specials, "chat template".to_string())
    }

    /// Compiles `src` with an explicit list of special tokens (`("pad_token", "<pad>")`, …).
    pub fn with_special_tokens(src: &str, specials: Vec<(String, String)>) -> Result<Self> {
        Self::build(src, specials, "chat template".to_string())
    }

    fn build(src: &str, specials: Vec<(String, String)>, origin: String) -> Result<Self> {
        let mut env = environment()
            .map_err(|e| Error::Runtime(format!("{origin}: cannot set up jinja: {e}")))?;
        env.add_template_owned(NAME, rewrite_generation_tags(src))
            .map_err(|e| Error::Runtime(format!("{origin}: cannot compile: {}", describe(&e))))?;
        Ok(Self {
            env,
            specials,
            origin,
        })
    }

    /// Renders a conversation. Context, as transformers builds it: `messages`, `tools` (`none`
    /// when not given), `documents` (`none`), `add_generation_prompt`, the special tokens, then
    /// `extra` (e.g. `date_string`, `enable_thinking`), which overrides keys of the same name.
    pub fn render(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String> {
        let mut ctx: Vec<(String, Value)> = vec![
            (
                "messages".into(),
                Value::from(minijinja::value::Serde(messages)),
            ),
            (
                "tools".into(),
                tools.map_or(Value::from(()), |t| Value::from(minijinja::value::Serde(t))),
            ),
            ("documents".into(), Value::from(())),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
        ];
        for (k, v) in &self.specials {
            ctx.push((k.clone(), Value::from(v.as_str())));
        }
        for (k, v) in extra {
            ctx.push((k.clone(), Value::from(minijinja::value::Serde(v))));
        }
        // Later entries win, like Python's dict update.
        let ctx = Value::from_pairs(ctx);
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Runtime(format!("{}: {}", self.origin, describe(&e))))?;
        tmpl.render(ctx)
            .map_err(|e| Error::Runtime(format!("{}: {}", self.origin, describe(&e))))
    }

    /// Where the template came from (a file name), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The prompt for a single user message, as `verify --prompt` uses it: the chat template
/// with `add_generation_prompt=True`, or the text itself when the model has no template (then
/// encode it with special tokens added).
pub fn user_prompt(template: Option<&ChatTemplate>, text: &str) -> Result<String> {
    match template {
        Some(t) => {
            let messages = serde_json::json!([{ "role": "user", "content": text }]);
            t.render(&messages, None, true, &Map::new())
        }
        None => Ok(text.to_string()),
    }
}

/// The template source and a name for it, or `None`.
fn find_template(model_dir: &Path) -> Result<Option<(String, String)>> {
    let jinja = model_dir.join("chat_template.jinja");
    match crate::checkpoint::input::read_to_string(&jinja) {
        // Python reads the file in text mode: universal newlines.
        Ok(s) => {
            return Ok(Some((
                s.replace("\r\n", "\n").replace('\r', "\n"),
                jinja.display().to_string(),
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&jinja, e)),
    }
    for file in ["chat_template.json", "tokenizer_config.json"] {
        let path = model_dir.join(file);
        let Some(json) = read_json_opt(&path)? else {
            continue;
        };
        if let Some(src) = template_field(json.get("chat_template"), &path)? {
            return Ok(Some((src, format!("{} chat_template", path.display()))));
        }
    }
    Ok(None)
}

/// A `chat_template` value: a string, or a list of `{name, template}` (take `default`).
fn template_field(v: Option<&Json>, path: &Path) -> Result<Option<String>> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let default = list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
            match default
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
            {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(Error::Runtime(format!(
                    "{}: chat_template is a list without a \"default\" entry",
                    path.display()
                ))),
            }
        }
        Some(_) => Err(Error::Runtime(format!(
            "{}: chat_template must be a string or a list of {{name, template}}",
            path.display()
        ))),
    }
}

/// A minijinja environment configured like transformers' jinja2 environment.
fn environment() -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    Ok(env)
}

/// Marks an error raised by the template's own `raise_exception`.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
}

/// `datetime.now().strftime(fmt)` on the local clock.
fn strftime_now(fmt: String) -> std::result::Result<String, minijinja::Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(fmt.as_bytes(), &now).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now({fmt:?}): {e}"),
        )
    })
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`
/// (minijinja filters take at most five arguments: `separators` and `sort_keys` by keyword only).
fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let arg =
        |pos: Option<Value>, key: &str| -> std::result::Result<Option<Value>, minijinja::Error> {
            Ok(match kwargs.get::<Option<Value>>(key)? {
                Some(v) => Some(v),
                None => pos,
            })
        };
    let bad =
        |what: &str| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {what}"));
    let mut opts = DumpOptions::default();
    if let Some(v) = arg(ensure_ascii, "ensure_ascii")? {
        opts.ensure_ascii = v.is_true();
    }
    opts.indent = match arg(indent, "indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (_, Some(s)) => Some(s.to_string()),
            _ => return Err(bad("indent must be an integer or a string")),
        },
    };
    if let Some(v) = arg(None, "separators")?.filter(|v| !v.is_none()) {
        let item = v.get_item_by_index(0)?;
        let key = v.get_item_by_index(1)?;
        match (item.as_str(), key.as_str()) {
            (Some(i), Some(k)) => opts.separators = Some((i.to_string(), k.to_string())),
            _ => return Err(bad("separators must be a pair of strings")),
        }
    }
    if let Some(v) = arg(None, "sort_keys")? {
        opts.sort_keys = v.is_true();
    }
    kwargs.assert_all_used()?;
    if value.is_undefined() {
        return Err(bad("undefined value is not JSON serializable"));
    }
    let json = serde_json::to_value(value)
        .map_err(|e| bad(&format!("value is not JSON serializable: {e}")))?;
    Ok(Value::from(crate::format::pyjson::dumps_with(&json, &opts)))
}

/// transformers' `AssistantTracker` extension adds `{% generation %}…{% endgeneration %}`, which
/// renders its body unchanged. minijinja has no such tag: turn it into an `if true` block, which
/// keeps the tag's whitespace control (`-`/`+`, trim_blocks, lstrip_blocks) intact.
fn rewrite_generation_tags(src: &str) -> String {
    if !src.contains("generation") {
        return src.to_string();
    }
    let re = regex::Regex::new(r"\{%([-+]?)(\s*)(end)?generation(\s*)([-+]?)%\}")
        .expect("static regex is valid");
    re.replace_all(src, |c: &regex::Captures| {
        let tag = if c.get(3).is_some() {
            "endif"
        } else {
            "if true"
        };
        format!("{{%{}{}{}{}{}%}}", &c[1], &c[2], tag, &c[4], &c[5])
    })
    .into_owned()
}

/// One line for a minijinja error: the template's own `raise_exception` message verbatim,
/// otherwise the error kind and detail with the template line.
fn describe(e: &minijinja::Error) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<minijinja::Error>() {
            if mj.source().is_some_and(|s| s.is::<Raised>()) {
                return format!(
                    "template raised an exception: {}",
                    mj.detail().unwrap_or("")
                );
            }
        }
        cur = err.source();
    }
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    match e.detail() {
        Some(d) => format!("{}: {d}{line}", e.kind()),
        None => format!("{}{line}", e.kind()),
    }
}
