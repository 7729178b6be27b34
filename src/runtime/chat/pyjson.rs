//! Python's `json.dumps`, which transformers installs as the chat templates' `tojson` filter:
//! `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! Differences from minijinja's own `tojson`, all visible in rendered prompts: no HTML escaping
//! (`<`, `>`, `&`, `'` stay), separators `", "` / `": "` by default, Python's `indent` layout,
//! and floats written as Python's `repr` (`1.0`, `1e+20`).

use serde_json::Value as Json;

use crate::format::pyjson::py_float_repr;

/// Options of `json.dumps` that templates use.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// Indent string per level (`indent=4` → four spaces); `None` → one line.
    pub indent: Option<String>,
    /// (item separator, key separator); default `(", ", ": ")`, or `(",", ": ")` with indent.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// `json.dumps(value, **opts)`.
pub fn dumps(value: &Json, opts: &DumpOptions) -> String {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.as_str(), k.as_str()),
        None if opts.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let w = Writer {
        opts,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    w.value(value, 0, &mut out);
    out
}

struct Writer<'a> {
    opts: &'a DumpOptions,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl Writer<'_> {
    fn value(&self, v: &Json, level: usize, out: &mut String) {
        match v {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) if !n.is_f64() => out.push_str(&i.to_string()),
                (_, Some(u), _) if !n.is_f64() => out.push_str(&u.to_string()),
                (_, _, Some(f)) => out.push_str(&py_float_repr(f)),
                _ => out.push_str(&n.to_string()),
            },
            Json::String(s) => self.string(s, out),
            Json::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.value(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            Json::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                if self.opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.string(k, out);
                    out.push_str(self.key_sep);
                    self.value(item, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }

    /// Writes the item separator (before all but the first item) and the line break.
    fn separate(&self, index: usize, level: usize, out: &mut String) {
        if index > 0 {
            out.push_str(self.item_sep);
        }
        self.newline(level, out);
    }

    fn newline(&self, level: usize, out: &mut String) {
        if let Some(unit) = &self.opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(unit);
            }
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => push_u16_escape(c as u16, out),
                c if self.opts.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        push_u16_escape(*unit, out);
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

fn push_u16_escape(unit: u16, out: &mut String) {
    out.push_str(&format!("\\u{unit:04x}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_like_python() {
        let v: Json = serde_json::from_str(
            r#"{"b": [1, 2.0, {"c": null}], "a": "x<'&>\"\n\u0001é", "e": [], "f": {}}"#,
        )
        .unwrap();
        let plain = dumps(&v, &DumpOptions::default());
        assert_eq!(
            plain,
            r#"{"b": [1, 2.0, {"c": null}], "a": "x<'&>\"\n\u0001é", "e": [], "f": {}}"#
        );
        let opts = DumpOptions {
            indent: Some("  ".into()),
            ensure_ascii: true,
            sort_keys: true,
            ..Default::default()
        };
        let pretty = dumps(&v, &opts);
        let want = "{\n  \"a\": \"x<'&>\\\"\\n\\u0001\\u00e9\",\n  \"b\": [\n    1,\n    2.0,\n    {\n      \"c\": null\n    }\n  ],\n  \"e\": [],\n  \"f\": {}\n}";
        assert_eq!(pretty, want);
    }
}
