//! Python's `json.dumps`, byte for byte.
//!
//! llm-compressor / transformers write `config.json` and `tokenizer_config.json` with
//! `json.dumps(v, indent=2, sort_keys=True, ensure_ascii=...)` ([`dumps`]):
//! * object keys sorted recursively by code point (Rust's `str` order is the same),
//! * two-space indent, `","` at the end of an item line and `": "` between key and value,
//! * empty containers as `{}` and `[]`,
//! * integers as integers, floats in Python `repr` (`1e-05`, `500000.0`, `1e+16`),
//! * with `ensure_ascii` every character outside `' '..='~'` is written as `\uXXXX`
//!   (lowercase hex, surrogate pairs above U+FFFF),
//! * no trailing newline.
//!
//! Chat templates get the general form ([`dumps_with`]) as transformers' `tojson` filter:
//! no HTML escaping, separators `", "` / `": "` by default, Python's `indent` layout.

use serde_json::Value;

/// `json.dumps(v, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)`.
pub fn dumps(v: &Value, ensure_ascii: bool) -> String {
    let opts = DumpOptions {
        ensure_ascii,
        indent: Some("  ".into()),
        separators: None,
        sort_keys: true,
    };
    dumps_with(v, &opts)
}

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
pub fn dumps_with(value: &Value, opts: &DumpOptions) -> String {
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
    fn value(&self, v: &Value, level: usize, out: &mut String) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) if !n.is_f64() => out.push_str(&i.to_string()),
                (_, Some(u), _) if !n.is_f64() => out.push_str(&u.to_string()),
                (_, _, Some(f)) => out.push_str(&py_float_repr(f)),
                _ => out.push_str(&n.to_string()),
            },
            Value::String(s) => self.string(s, out),
            Value::Array(items) => {
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
            Value::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
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

/// Python `repr(float)` as `json.dumps` writes it (`allow_nan=True`): shortest round-trip
/// digits; fixed notation when the decimal exponent is in -4..16, else `d.ddde±XX`;
/// integral fixed values get `.0`; `Infinity`, `-Infinity`, `NaN`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.5e-7", "-0e0", "5e5".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        format!("{sign}{}", fixed_notation(&digits, exp))
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs())
    }
}

/// `digits` (d1 d2 ...) times 10^(exp - len + 1) in positional notation, always with a
/// fractional part.
fn fixed_notation(digits: &str, exp: i32) -> String {
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        let zeros = "0".repeat(point.unsigned_abs() as usize);
        return format!("0.{zeros}{digits}");
    }
    let point = point as usize;
    if digits.len() <= point {
        let zeros = "0".repeat(point - digits.len());
        return format!("{digits}{zeros}.0");
    }
    format!("{}.{}", &digits[..point], &digits[point..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (1e-05, "1e-05"),
            (500000.0, "500000.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-07, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.02, "0.02"),
            (1e-06, "1e-06"),
            (123456789.125, "123456789.125"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5e-5, "-2.5e-05"),
            (1.2345678901234567e16, "1.2345678901234568e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(*x), *want, "repr({x:e})");
        }
    }

    #[test]
    fn layout_matches_python() {
        let v = json!({"b": [1, 2.0, {}], "a": {"y": [], "x": null}, "c": "é\u{1F600}\u{7f}"});
        let want = "{\n  \"a\": {\n    \"x\": null,\n    \"y\": []\n  },\n  \"b\": [\n    1,\n    \
                    2.0,\n    {}\n  ],\n  \"c\": \"\\u00e9\\ud83d\\ude00\\u007f\"\n}";
        assert_eq!(dumps(&v, true), want);
        let raw = dumps(&v, false);
        assert!(raw.ends_with("\"c\": \"é\u{1F600}\u{7f}\"\n}"), "{raw}");
    }

    #[test]
    fn control_characters_are_escaped() {
        let v = json!("a\"b\\c\n\r\t\u{8}\u{c}\u{1}");
        assert_eq!(dumps(&v, false), r#""a\"b\\c\n\r\t\b\f\u0001""#);
    }

    #[test]
    fn dumps_like_python() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, 2.0, {"c": null}], "a": "x<'&>\"\n\u0001é", "e": [], "f": {}}"#,
        )
        .unwrap();
        let plain = dumps_with(&v, &DumpOptions::default());
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
        let pretty = dumps_with(&v, &opts);
        let want = "{\n  \"a\": \"x<'&>\\\"\\n\\u0001\\u00e9\",\n  \"b\": [\n    1,\n    2.0,\n    {\n      \"c\": null\n    }\n  ],\n  \"e\": [],\n  \"f\": {}\n}";
        assert_eq!(pretty, want);
    }
}
