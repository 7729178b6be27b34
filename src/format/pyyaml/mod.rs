//! A YAML writer that reproduces PyYAML's `yaml.dump(data, allow_unicode=True,
//! sort_keys=False, default_flow_style=None, width=88)` byte for byte: the call
//! llm-compressor uses to write `recipe.yaml`.
//!
//! It is a port of the parts of PyYAML 6's `Emitter` that a tree of strings, booleans,
//! integers, nulls, lists and string-keyed mappings reaches: block mappings, flow
//! collections for collections whose children are all scalars (`default_flow_style=None`),
//! indentless block sequences inside mappings, and the scalar style choice (plain, else
//! single-quoted, else double-quoted) with PyYAML's analysis, its YAML 1.1 implicit
//! resolvers (a string that would read back as a bool/int/float/null/timestamp is quoted)
//! and its line folding at column 88.

mod scalar;

use scalar::{analyze, escape, is_break, is_simple_key, needs_escape, resolves_to_str};

/// A YAML value as the recipe writer needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    /// An int or float, already in PyYAML's text form (see [`Yaml::int`], [`Yaml::float`]).
    Num(String),
    Str(String),
    Seq(Vec<Yaml>),
    /// A Python tuple: a sequence tagged `!!python/tuple` (PyYAML's full `Dumper`).
    Tuple(Vec<Yaml>),
    /// Keys in insertion order (`sort_keys=False`).
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// A string scalar.
    pub fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }

    /// An integer (`represent_int`: `str(i)`).
    pub fn int(i: impl Into<i128>) -> Yaml {
        Yaml::Num(i.into().to_string())
    }

    /// A float as PyYAML's `represent_float` writes it: `repr` lowercased, `.0` inserted
    /// before a bare exponent, `.nan`, `.inf`, `-.inf`.
    pub fn float(x: f64) -> Yaml {
        let text = if x.is_nan() {
            ".nan".to_string()
        } else if x.is_infinite() {
            if x > 0.0 { ".inf" } else { "-.inf" }.to_string()
        } else {
            let repr = crate::format::pyjson::py_float_repr(x).to_lowercase();
            if !repr.contains('.') && repr.contains('e') {
                repr.replacen('e', ".0e", 1)
            } else {
                repr
            }
        };
        Yaml::Num(text)
    }

    /// A parsed YAML value (held as JSON) as a YAML tree.
    pub fn from_json(v: &serde_json::Value) -> Yaml {
        use serde_json::Value;
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Yaml::int(i),
                (None, Some(u)) => Yaml::int(u),
                _ => Yaml::float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Yaml::str(s.as_str()),
            Value::Array(items) => Yaml::Seq(items.iter().map(Yaml::from_json).collect()),
            Value::Object(m) => Yaml::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Yaml::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// A list of string scalars.
    pub fn strs(items: &[String]) -> Yaml {
        Yaml::Seq(items.iter().map(Yaml::str).collect())
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Yaml::Seq(_) | Yaml::Tuple(_) | Yaml::Map(_))
    }
}

const BEST_WIDTH: usize = 88;
const BEST_INDENT: usize = 2;

/// `yaml.dump(value, allow_unicode=True, sort_keys=False, default_flow_style=None,
/// width=88)`.
pub fn dump(value: &Yaml) -> String {
    let mut e = Emitter {
        out: String::new(),
        column: 0,
        whitespace: true,
        indention: true,
        open_ended: false,
        indent: None,
        indents: Vec::new(),
        flow_level: 0,
    };
    e.node(
        value,
        Ctx {
            root: true,
            ..Ctx::default()
        },
    );
    e.write_indent(); // document end
    if e.open_ended {
        e.write_indicator("...", true, false, false);
        e.write_indent();
    }
    e.out
}

/// Where a node sits (PyYAML's `*_context` flags).
#[derive(Clone, Copy, Default)]
struct Ctx {
    root: bool,
    mapping: bool,
    simple_key: bool,
}

struct Emitter {
    out: String,
    column: usize,
    whitespace: bool,
    indention: bool,
    open_ended: bool,
    indent: Option<usize>,
    indents: Vec<Option<usize>>,
    flow_level: usize,
}

impl Emitter {
    fn node(&mut self, value: &Yaml, ctx: Ctx) {
        match value {
            Yaml::Seq(items) => self.sequence(items, ctx),
            Yaml::Tuple(items) => {
                // `process_tag` writes the tag before the collection starts.
                self.write_indicator("!!python/tuple", true, false, false);
                self.sequence(items, ctx);
            }
            Yaml::Map(entries) => {
                let flow = entries.iter().all(|(_, v)| v.is_scalar());
                if self.flow_level > 0 || flow {
                    self.flow_mapping(entries);
                } else {
                    self.block_mapping(entries);
                }
            }
            scalar => {
                self.increase_indent(true, false);
                self.scalar(scalar, ctx);
                self.indent = self.indents.pop().flatten();
            }
        }
    }

    fn sequence(&mut self, items: &[Yaml], ctx: Ctx) {
        if self.flow_level > 0 || items.iter().all(Yaml::is_scalar) {
            self.flow_sequence(items);
        } else {
            self.block_sequence(items, ctx);
        }
    }

    fn scalar(&mut self, value: &Yaml, ctx: Ctx) {
        let text = match value {
            Yaml::Null => "null".to_string(),
            Yaml::Bool(b) => b.to_string(),
            Yaml::Num(n) => n.clone(),
            Yaml::Str(s) => s.clone(),
            Yaml::Seq(_) | Yaml::Tuple(_) | Yaml::Map(_) => {
                unreachable!("scalar() takes scalars")
            }
        };
        // Non-string scalars always resolve back to their own tag: plain.
        let implicit_plain = !matches!(value, Yaml::Str(_)) || resolves_to_str(&text);
        let chars: Vec<char> = text.chars().collect();
        let a = analyze(&chars);
        let split = !ctx.simple_key;
        let plain_ok = implicit_plain
            && !(ctx.simple_key && (a.empty || a.multiline))
            && ((self.flow_level > 0 && a.allow_flow_plain)
                || (self.flow_level == 0 && a.allow_block_plain));
        if plain_ok {
            self.write_plain(&chars, split, ctx.root);
        } else if a.allow_single_quoted && !(ctx.simple_key && a.multiline) {
            self.write_single_quoted(&chars, split);
        } else {
            self.write_double_quoted(&chars, split);
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        self.indent = match self.indent {
            None if flow => Some(BEST_INDENT),
            None => Some(0),
            Some(i) if !indentless => Some(i + BEST_INDENT),
            Some(i) => Some(i),
        };
    }

    fn flow_sequence(&mut self, items: &[Yaml]) {
        self.write_indicator("[", true, true, false);
        self.flow_level += 1;
        self.increase_indent(true, false);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.write_indicator(",", false, false, false);
            }
            if self.column > BEST_WIDTH {
                self.write_indent();
            }
            self.node(item, Ctx::default());
        }
        self.indent = self.indents.pop().flatten();
        self.flow_level -= 1;
        self.write_indicator("]", false, false, false);
    }

    fn flow_mapping(&mut self, entries: &[(String, Yaml)]) {
        self.write_indicator("{", true, true, false);
        self.flow_level += 1;
        self.increase_indent(true, false);
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                self.write_indicator(",", false, false, false);
            }
            if self.column > BEST_WIDTH {
                self.write_indent();
            }
            let key_node = Yaml::str(key.as_str());
            let value_ctx = Ctx {
                mapping: true,
                ..Ctx::default()
            };
            if !self.simple_key(&key_node, key) {
                self.write_indicator("?", true, false, false);
                self.node(&key_node, value_ctx);
                if self.column > BEST_WIDTH {
                    self.write_indent();
                }
                self.write_indicator(":", true, false, false);
            }
            self.node(value, value_ctx);
        }
        self.indent = self.indents.pop().flatten();
        self.flow_level -= 1;
        self.write_indicator("}", false, false, false);
    }

    fn block_sequence(&mut self, items: &[Yaml], ctx: Ctx) {
        let indentless = ctx.mapping && !self.indention;
        self.increase_indent(false, indentless);
        for item in items {
            self.write_indent();
            self.write_indicator("-", true, false, true);
            self.node(item, Ctx::default());
        }
        self.indent = self.indents.pop().flatten();
    }

    /// Writes `key` as a simple key and its `:` when PyYAML would; false (nothing written)
    /// when the key needs the explicit `? key :` form.
    fn simple_key(&mut self, key_node: &Yaml, key: &str) -> bool {
        if !is_simple_key(key) {
            return false;
        }
        let ctx = Ctx {
            mapping: true,
            simple_key: true,
            root: false,
        };
        self.node(key_node, ctx);
        self.write_indicator(":", false, false, false);
        true
    }

    fn block_mapping(&mut self, entries: &[(String, Yaml)]) {
        self.increase_indent(false, false);
        for (key, value) in entries {
            self.write_indent();
            let key_node = Yaml::str(key.as_str());
            let value_ctx = Ctx {
                mapping: true,
                ..Ctx::default()
            };
            if !self.simple_key(&key_node, key) {
                self.write_indicator("?", true, false, true);
                self.node(&key_node, value_ctx);
                self.write_indent();
                self.write_indicator(":", true, false, true);
            }
            self.node(value, value_ctx);
        }
        self.indent = self.indents.pop().flatten();
    }

    fn write_indicator(&mut self, ind: &str, need_ws: bool, whitespace: bool, indention: bool) {
        if !self.whitespace && need_ws {
            self.out.push(' ');
            self.column += 1;
        }
        self.out.push_str(ind);
        self.column += ind.chars().count();
        self.whitespace = whitespace;
        self.indention = self.indention && indention;
        self.open_ended = false;
    }

    fn write_indent(&mut self) {
        let indent = self.indent.unwrap_or(0);
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.write_line_break(None);
        }
        if self.column < indent {
            self.whitespace = true;
            self.out
                .extend(std::iter::repeat_n(' ', indent - self.column));
            self.column = indent;
        }
    }

    fn write_line_break(&mut self, br: Option<char>) {
        self.out.push(br.unwrap_or('\n'));
        self.whitespace = true;
        self.indention = true;
        self.column = 0;
    }

    fn write_chars(&mut self, chars: &[char]) {
        self.out.extend(chars);
        self.column += chars.len();
    }

    fn write_plain(&mut self, text: &[char], split: bool, root: bool) {
        if root {
            self.open_ended = true;
        }
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write_chars(&[' ']);
        }
        self.whitespace = false;
        self.indention = false;
        // Plain scalars never hold line breaks (analysis forbids it): only spaces fold.
        let (mut spaces, mut start) = (false, 0);
        for end in 0..=text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if ch.is_none() || ch == Some(' ') {
                self.write_chars(&text[start..end]);
                start = end;
            }
            spaces = ch == Some(' ');
        }
    }

    fn write_single_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("'", true, false, false);
        let (mut spaces, mut breaks, mut start) = (false, false, 0);
        for end in 0..=text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != text.len()
                    {
                        self.write_indent();
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if text[start] == '\n' {
                        self.write_line_break(None);
                    }
                    for &br in &text[start..end] {
                        self.write_line_break((br != '\n').then_some(br));
                    }
                    self.write_indent();
                    start = end;
                }
            } else if (ch.is_none() || ch.is_some_and(|c| c == ' ' || is_break(c) || c == '\''))
                && start < end
            {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if ch == Some('\'') {
                self.write_chars(&['\'', '\'']);
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
        }
        self.write_indicator("'", false, false, false);
    }

    fn write_double_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("\"", true, false, false);
        let mut start = 0;
        for end in 0..=text.len() {
            let ch = text.get(end).copied();
            if ch.is_none_or(needs_escape) {
                if start < end {
                    self.write_chars(&text[start..end]);
                    start = end;
                }
                if let Some(c) = ch {
                    let esc: Vec<char> = escape(c).chars().collect();
                    self.write_chars(&esc);
                    start = end + 1;
                }
            }
            if 0 < end
                && end + 1 < text.len()
                && (ch == Some(' ') || start >= end)
                && (self.column + end) as isize - start as isize > BEST_WIDTH as isize
                && split
            {
                let mut data: Vec<char> = text[start.min(end)..end].to_vec();
                data.push('\\');
                if start < end {
                    start = end;
                }
                self.write_chars(&data);
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if text[start] == ' ' {
                    self.write_chars(&['\\']);
                }
            }
        }
        self.write_indicator("\"", false, false, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Yaml)]) -> Yaml {
        Yaml::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn tuples_carry_the_python_tag() {
        // yaml.dump({'s': {'m': [(['re:.*q', 'k'], 'c'), ('x', 'y')], 'n': 1}}, ...)
        let m = Yaml::Seq(vec![
            Yaml::Tuple(vec![
                Yaml::Seq(vec![Yaml::str("re:.*q"), Yaml::str("k")]),
                Yaml::str("c"),
            ]),
            Yaml::Tuple(vec![Yaml::str("x"), Yaml::str("y")]),
        ]);
        let doc = map(&[("s", map(&[("m", m), ("n", Yaml::int(1))]))]);
        assert_eq!(
            dump(&doc),
            "s:\n  m:\n  - !!python/tuple\n    - ['re:.*q', k]\n    - c\n  - !!python/tuple [x, y]\n  n: 1\n"
        );
    }

    #[test]
    fn nested_block_and_flow() {
        let v = map(&[(
            "a",
            map(&[
                ("targets", Yaml::Seq(vec![Yaml::str("Linear")])),
                ("empty", Yaml::Seq(vec![])),
                ("obs", Yaml::Map(vec![])),
                ("n", Yaml::Null),
                ("b", Yaml::Bool(false)),
                ("i", Yaml::int(-3)),
                ("f", Yaml::float(1e17)),
                (
                    "s",
                    map(&[("X", Yaml::Seq(vec![Yaml::str("re:.*q_proj")]))]),
                ),
            ]),
        )]);
        let want = "a:\n  targets: [Linear]\n  empty: []\n  obs: {}\n  n: null\n  b: false\n  \
                    i: -3\n  f: 1.0e+17\n  s:\n    X: ['re:.*q_proj']\n";
        assert_eq!(dump(&v), want);
    }

    /// Cases generated with PyYAML 6.0.3: `[json_input, yaml.dump(input, allow_unicode=True,
    /// sort_keys=False, default_flow_style=None, width=88)]`.
    #[test]
    fn matches_pyyaml_dump() {
        let cases: Vec<(String, String)> =
            serde_json::from_str(include_str!("../testdata/pyyaml_dump_cases.json")).unwrap();
        let mut failed = Vec::new();
        for (input, want) in &cases {
            let v: serde_json::Value = serde_json::from_str(input).unwrap();
            let got = dump(&Yaml::from_json(&v));
            if &got != want {
                failed.push(format!("input {input}\n--- want\n{want}--- got\n{got}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} differ:\n{}",
            failed.len(),
            cases.len(),
            failed.join("\n")
        );
    }

    #[test]
    fn resolver_quotes_look_alikes() {
        for s in [
            "yes",
            "Off",
            "1_000",
            "0x1F",
            "1.5",
            ".inf",
            "~",
            "",
            "2024-01-02",
            "<<",
            "=",
        ] {
            assert!(!resolves_to_str(s), "{s:?}");
        }
        for s in ["Linear", "lm_head", "FP8_DYNAMIC", "yess", "1.2.3", "0b2"] {
            assert!(resolves_to_str(s), "{s:?}");
        }
    }
}
