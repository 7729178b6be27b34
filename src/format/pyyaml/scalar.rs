//! Scalar analysis for the PyYAML emitter port: which styles a string allows
//! (`analyze_scalar`), whether a plain string reads back as a string (the YAML 1.1 implicit
//! resolvers), simple keys, and double-quoted escapes.

use regex::Regex;
use std::sync::LazyLock;

pub(super) fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

pub(super) fn is_space_or_break(c: char) -> bool {
    matches!(c, '\0' | ' ' | '\t' | '\r') || is_break(c)
}

/// A double-quoted character that must be escaped (with `allow_unicode=True`).
pub(super) fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '"' | '\\' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}'
    ) || !((' '..='~').contains(&c)
        || ('\u{A0}'..='\u{D7FF}').contains(&c)
        || ('\u{E000}'..='\u{FFFD}').contains(&c))
}

pub(super) fn escape(c: char) -> String {
    let short = match c {
        '\0' => Some('0'),
        '\u{07}' => Some('a'),
        '\u{08}' => Some('b'),
        '\t' => Some('t'),
        '\n' => Some('n'),
        '\u{0B}' => Some('v'),
        '\u{0C}' => Some('f'),
        '\r' => Some('r'),
        '\u{1B}' => Some('e'),
        '"' => Some('"'),
        '\\' => Some('\\'),
        '\u{85}' => Some('N'),
        '\u{A0}' => Some('_'),
        '\u{2028}' => Some('L'),
        '\u{2029}' => Some('P'),
        _ => None,
    };
    match (short, c as u32) {
        (Some(s), _) => format!("\\{s}"),
        (None, n) if n <= 0xFF => format!("\\x{n:02X}"),
        (None, n) if n <= 0xFFFF => format!("\\u{n:04X}"),
        (None, n) => format!("\\U{n:08X}"),
    }
}

/// PyYAML's `check_simple_key` for a string key. The length limit counts the prepared
/// tag too (`!!str`, 5 characters) even though it is never written.
pub(super) fn is_simple_key(key: &str) -> bool {
    let chars: Vec<char> = key.chars().collect();
    let a = analyze(&chars);
    chars.len() + "!!str".len() < 128 && !a.empty && !a.multiline
}

/// PyYAML's `ScalarAnalysis` (the fields the style choice reads).
pub(super) struct Analysis {
    pub empty: bool,
    pub multiline: bool,
    pub allow_flow_plain: bool,
    pub allow_block_plain: bool,
    pub allow_single_quoted: bool,
}

/// Port of PyYAML's `Emitter.analyze_scalar` (with `allow_unicode=True`).
pub(super) fn analyze(s: &[char]) -> Analysis {
    if s.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_flow_plain: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let starts = |p: &str| s.iter().take(3).copied().eq(p.chars());
    let document_marker = s.len() >= 3 && (starts("---") || starts("..."));
    let (mut block_ind, mut flow_ind) = (document_marker, document_marker);
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break) = (false, false);
    let (mut trailing_space, mut trailing_break) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut prev_space, mut prev_break) = (false, false);
    let mut preceded_by_ws = true;
    let mut followed_by_ws = s.len() == 1 || is_space_or_break(s[1]);
    for (index, &ch) in s.iter().enumerate() {
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                flow_ind = true;
                block_ind = true;
            }
            if ch == '?' || ch == ':' {
                flow_ind = true;
                block_ind |= followed_by_ws;
            }
            if ch == '-' && followed_by_ws {
                flow_ind = true;
                block_ind = true;
            }
        } else {
            if ",?[]{}".contains(ch) {
                flow_ind = true;
            }
            if ch == ':' {
                flow_ind = true;
                block_ind |= followed_by_ws;
            }
            if ch == '#' && preceded_by_ws {
                flow_ind = true;
                block_ind = true;
            }
        }
        line_breaks |= is_break(ch);
        if !(ch == '\n' || (' '..='~').contains(&ch)) {
            let unicode = (ch == '\u{85}'
                || ('\u{A0}'..='\u{D7FF}').contains(&ch)
                || ('\u{E000}'..='\u{FFFD}').contains(&ch)
                || ('\u{10000}'..'\u{10FFFF}').contains(&ch))
                && ch != '\u{FEFF}';
            special |= !unicode;
        }
        if ch == ' ' {
            leading_space |= index == 0;
            trailing_space |= index == s.len() - 1;
            break_space |= prev_break;
            (prev_space, prev_break) = (true, false);
        } else if is_break(ch) {
            leading_break |= index == 0;
            trailing_break |= index == s.len() - 1;
            space_break |= prev_space;
            (prev_space, prev_break) = (false, true);
        } else {
            (prev_space, prev_break) = (false, false);
        }
        preceded_by_ws = is_space_or_break(ch);
        followed_by_ws = index + 2 >= s.len() || is_space_or_break(s[index + 2]);
    }
    let mut flow_plain = true;
    let mut block_plain = true;
    let mut single = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        (flow_plain, block_plain) = (false, false);
    }
    if break_space {
        (flow_plain, block_plain, single) = (false, false, false);
    }
    if space_break || special {
        (flow_plain, block_plain, single) = (false, false, false);
    }
    if line_breaks {
        (flow_plain, block_plain) = (false, false);
    }
    flow_plain &= !flow_ind;
    block_plain &= !block_ind;
    Analysis {
        empty: false,
        multiline: line_breaks,
        allow_flow_plain: flow_plain,
        allow_block_plain: block_plain,
        allow_single_quoted: single,
    }
}

/// PyYAML's implicit resolvers (YAML 1.1): a plain scalar matching one of these reads back
/// as something other than a string.
static IMPLICIT: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
        r"^(?:<<)$",
        r"^(?:~|null|Null|NULL|)$",
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
        r"^(?:=)$",
        r"^(?:!|&|\*)$",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("static pattern"))
    .collect()
});

/// Whether a plain `s` would be read back as a string by PyYAML's resolver.
pub(super) fn resolves_to_str(s: &str) -> bool {
    // Python's `$` also matches before one trailing newline.
    let trimmed = s.strip_suffix('\n');
    !IMPLICIT
        .iter()
        .any(|re| re.is_match(s) || trimmed.is_some_and(|t| re.is_match(t)))
}
