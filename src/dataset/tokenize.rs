//! Rows → token ids, as llm-compressor 0.14's `TextGenerationDataset`
//! (`llmcompressor/transformers/data/base.py`) and its examples do it:
//! - `input_ids`: taken as they are, cut to `max_seq_length` (its `DataCollatorWithTruncation`);
//! - `messages`: rendered with the model's chat template (`add_generation_prompt=False`), then
//!   tokenized without adding special tokens (the examples' `add_special_tokens=False`);
//! - `text` (or the named column): `tokenizer(text, truncation=True, max_length=…)`, special
//!   tokens added as the tokenizer's post-processor adds them, `max_length` capped at the
//!   tokenizer's `model_max_length`.

use super::table::Row;
use crate::runtime::chat::ChatTemplate;
use crate::runtime::tokenizer::TextTokenizer;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Which column the samples come from, and how it is turned into ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    InputIds,
    Messages(String),
    Text(String),
}

impl Column {
    pub fn name(&self) -> &str {
        match self {
            Column::InputIds => "input_ids",
            Column::Messages(c) | Column::Text(c) => c,
        }
    }
}

/// `input_ids` if present, else `messages`, else the text column (`text` by default). A
/// named column must exist; it is messages when its value in the first row is a list.
pub fn choose_column(
    names: &[String],
    first: Option<&Row>,
    text_column: Option<&str>,
    origin: &str,
) -> Result<Column> {
    let has = |c: &str| names.iter().any(|n| n == c);
    if let Some(c) = text_column {
        if !has(c) {
            return Err(missing(origin, &format!("no column '{c}'"), names));
        }
        return Ok(match first.and_then(|r| r.get(c)) {
            Some(Value::Array(_)) => Column::Messages(c.to_string()),
            _ => Column::Text(c.to_string()),
        });
    }
    if has("input_ids") {
        Ok(Column::InputIds)
    } else if has("messages") {
        Ok(Column::Messages("messages".into()))
    } else if has("text") {
        Ok(Column::Text("text".into()))
    } else {
        Err(missing(
            origin,
            "no 'input_ids', 'messages' or 'text' column (name the text column with \
             --text-column)",
            names,
        ))
    }
}

fn missing(origin: &str, what: &str, names: &[String]) -> Error {
    Error::Dataset(format!(
        "{origin}: {what}; its columns are: {}",
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(", ")
        }
    ))
}

/// One tokenized sample.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// Turns rows of one column into ids.
pub struct Encoder {
    column: Column,
    max_len: usize,
    /// The tokenizer with truncation, the same without (to tell what was cut), the template.
    text: Option<(Tokenizer, Tokenizer, Option<ChatTemplate>)>,
}

impl Encoder {
    /// Loads the tokenizer (and, for messages, the chat template) from `dir`; `input_ids`
    /// need neither.
    pub fn new(
        column: &Column,
        dir: &Path,
        max_len: usize,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        if max_len == 0 {
            return Err(Error::Dataset(
                "the maximum sequence length must be at least 1".into(),
            ));
        }
        if *column == Column::InputIds {
            return Ok(Self {
                column: column.clone(),
                max_len,
                text: None,
            });
        }
        let max_len = cap_to_model_max(dir, max_len, warnings)?;
        let tokenizer = TextTokenizer::load(dir)?;
        let whole = tokenizer.inner().clone();
        let mut inner = whole.clone();
        let params = TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: truncation_side(dir)?,
        };
        inner
            .with_truncation(Some(params))
            .map_err(|e| Error::Dataset(format!("tokenizer: cannot truncate: {e}")))?;
        let template = match column {
            Column::Messages(c) => Some(ChatTemplate::load(dir)?.ok_or_else(|| {
                Error::Dataset(format!(
                    "the '{c}' column holds chat messages, but the model in {} has no chat \
                     template to render them",
                    dir.display()
                ))
            })?),
            _ => None,
        };
        Ok(Self {
            column: column.clone(),
            max_len,
            text: Some((inner, whole, template)),
        })
    }

    /// The samples of `rows`, which are dataset rows number `numbers` (for messages).
    pub fn encode_rows(&self, rows: &[Row], numbers: &[usize]) -> Result<Vec<Encoded>> {
        rows.iter()
            .zip(numbers)
            .map(|(row, &r)| self.encode(row, r))
            .collect()
    }

    fn encode(&self, row: &Row, index: usize) -> Result<Encoded> {
        let name = self.column.name();
        let value = row.get(name).unwrap_or(&Value::Null);
        let bad = |what: &str| Error::Dataset(format!("dataset row {index}: '{name}' {what}"));
        match (&self.column, &self.text) {
            (Column::InputIds, _) => {
                let ids = token_ids(value).ok_or_else(|| {
                    bad("is not a list of token ids (integers from 0 to 4294967295)")
                })?;
                let truncated = ids.len() > self.max_len;
                Ok(Encoded {
                    ids: ids.into_iter().take(self.max_len).collect(),
                    truncated,
                })
            }
            (Column::Text(_), Some((tok, whole, _))) => {
                let text = value.as_str().ok_or_else(|| bad("is not a string"))?;
                encode_text(tok, whole, text, true, index)
            }
            (Column::Messages(_), Some((tok, whole, Some(template)))) => {
                if !is_messages(value) {
                    return Err(bad(
                        "is not a list of messages ({\"role\": …, \"content\": …})",
                    ));
                }
                let text = template
                    .render(value, None, false, &Map::new())
                    .map_err(|e| bad(&format!("cannot be rendered with the chat template: {e}")))?;
                encode_text(tok, whole, &text, false, index)
            }
            _ => unreachable!("Encoder::new loads what the column needs"),
        }
    }
}

/// Encodes with truncation; a sample that comes out at the maximum length is encoded again
/// without it to tell whether it was cut (the tokenizer does not report it).
fn encode_text(
    tok: &Tokenizer,
    whole: &Tokenizer,
    text: &str,
    special: bool,
    index: usize,
) -> Result<Encoded> {
    let failed =
        |e: tokenizers::Error| Error::Dataset(format!("dataset row {index}: cannot tokenize: {e}"));
    let ids = tok
        .encode(text, special)
        .map_err(failed)?
        .get_ids()
        .to_vec();
    let max_len = tok.get_truncation().map_or(usize::MAX, |t| t.max_length);
    let truncated =
        ids.len() >= max_len && whole.encode(text, special).map_err(failed)?.len() > ids.len();
    Ok(Encoded { ids, truncated })
}

fn token_ids(value: &Value) -> Option<Vec<u32>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
        .collect()
}

fn is_messages(value: &Value) -> bool {
    value.as_array().is_some_and(|list| {
        list.iter()
            .all(|m| m.get("role").is_some_and(Value::is_string) && m.get("content").is_some())
    })
}

fn tokenizer_config(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Dataset(format!("{}: malformed JSON: {e}", path.display())))
}

/// llm-compressor uses `min(max_seq_length, tokenizer.model_max_length)`, with a warning.
fn cap_to_model_max(dir: &Path, max_len: usize, warnings: &mut Vec<String>) -> Result<usize> {
    let model_max = tokenizer_config(dir)?
        .and_then(|c| c.get("model_max_length").and_then(Value::as_u64))
        .and_then(|m| usize::try_from(m).ok());
    match model_max {
        Some(m) if m < max_len => {
            warnings.push(format!(
                "the maximum sequence length {max_len} is larger than the tokenizer's \
                 model_max_length {m}; using {m}"
            ));
            Ok(m.max(1))
        }
        _ => Ok(max_len),
    }
}

/// `truncation_side` from `tokenizer_config.json` (transformers' default: right).
fn truncation_side(dir: &Path) -> Result<TruncationDirection> {
    let side = tokenizer_config(dir)?.and_then(|c| {
        c.get("truncation_side")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    Ok(match side.as_deref() {
        Some("left") => TruncationDirection::Left,
        _ => TruncationDirection::Right,
    })
}
