//! Python's `json.dumps(v, indent=2, sort_keys=True, ensure_ascii=...)`, byte for byte.
//!
//! This is how llm-compressor / transformers write `config.json` and
//! `tokenizer_config.json`:
//! * object keys sorted recursively by code point (Rust's `str` order is the same),
//! * two-space indent, `","` at the end of an item line and `": "` between key and value,
//! * empty containers as `{}` and `[]`,
//! * integers as integers, floats in Python `repr` (`1e-05`, `500000.0`, `1e+16`),
//! * with `ensure_ascii` every character outside `' '..='~'` is written as `\uXXXX`
//!   (lowercase hex, surrogate pairs above U+FFFF),
//! * no trailing newline.

use serde_json::{Number, Value};
use std::fmt::Write;

/// `json.dumps(v, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)`.
pub fn dumps(v: &Value, ensure_ascii: bool) -> String {
    let mut out = String::new();
    write_value(&mut out, v, 0, ensure_ascii);
    out
}

fn write_value(out: &mut String, v: &Value, level: usize, ascii: bool) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number_repr(n)),
        Value::String(s) => write_string(out, s, ascii),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                item_start(out, i, level + 1);
                write_value(out, item, level + 1, ascii);
            }
            newline_indent(out, level);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                item_start(out, i, level + 1);
                write_string(out, key, ascii);
                out.push_str(": ");
                write_value(out, &map[key], level + 1, ascii);
            }
            newline_indent(out, level);
            out.push('}');
        }
    }
}

/// Item separator: Python uses `","` (no space) when `indent` is set.
fn item_start(out: &mut String, index: usize, level: usize) {
    if index > 0 {
        out.push(',');
    }
    newline_indent(out, level);
}

fn newline_indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// A JSON number as Python writes it: ints as ints, floats in `repr`.
fn number_repr(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    py_float_repr(n.as_f64().unwrap_or(f64::NAN))
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

/// A JSON string literal as Python's encoder writes it.
fn write_string(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_u_escape(out, c as u32),
            c if ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, u32::from(*unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u32) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\u{unit:04x}");
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
}
