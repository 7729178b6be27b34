//! Text ↔ token ids: the `tokenizers` crate on `tokenizer.json`, plus the special tokens
//! (BOS/EOS) that transformers reads from `tokenizer_config.json`, `special_tokens_map.json`,
//! `generation_config.json` and `config.json`.

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer,
};

use crate::{Error, Result};

/// The names of the special tokens transformers passes to a chat template when they are set.
pub(crate) const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A tokenizer with the model's special tokens.
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.eos_ids)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `model_dir`, and the special tokens from the config files
    /// next to it. EOS ids are the union (first-seen order) of `generation_config.json`'s and
    /// `config.json`'s `eos_token_id` (a number or a list) and the id of the tokenizer's
    /// `eos_token`.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join("tokenizer.json");
        match crate::checkpoint::input::check_regular(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Runtime(format!(
                    "{}: not found (the model directory needs a tokenizer.json)",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io(&path, e)),
            Ok(()) => {}
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| {
            Error::Runtime(format!("{}: cannot load tokenizer: {e}", path.display()))
        })?;
        let specials = special_tokens(model_dir)?;
        let gen = read_json_opt(&model_dir.join("generation_config.json"))?;
        let cfg = read_json_opt(&model_dir.join("config.json"))?;
        let named = |key: &str| {
            specials
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };

        let mut eos_ids = Vec::new();
        for json in [&gen, &cfg].into_iter().flatten() {
            eos_ids.extend(token_ids(json.get("eos_token_id")));
        }
        let eos_token = named("eos_token");
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|id| seen.insert(*id));

        let bos_token = named("bos_token");
        let bos_id = match bos_token.as_deref() {
            Some(t) => inner.token_to_id(t),
            None => [&gen, &cfg]
                .into_iter()
                .flatten()
                .find_map(|j| token_ids(j.get("bos_token_id")).first().copied()),
        };
        let bos_token = bos_token.or_else(|| bos_id.and_then(|id| inner.id_to_token(id)));
        let eos_token = eos_token.or_else(|| eos_ids.first().and_then(|&id| inner.id_to_token(id)));
        Ok(Self {
            inner,
            eos_ids,
            bos_id,
            bos_token,
            eos_token,
        })
    }

    /// Encodes `text`. A chat-rendered prompt already holds its special tokens: encode it with
    /// `add_special_tokens = false`, as transformers' `apply_chat_template(tokenize=True)` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Runtime(format!("tokenizer: cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes `ids`, keeping special tokens (`skip_special_tokens=False`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Decodes `ids`, leaving out special tokens when `skip_special_tokens`.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Runtime(format!("tokenizer: cannot decode ids: {e}")))
    }

    /// Every id that ends generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The BOS token's text, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The BOS token's id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The EOS token's text (the tokenizer's `eos_token`, else the first EOS id's token).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Streaming detokenizer for printing tokens as they come, keeping special tokens.
    /// A character split over several tokens comes out once all its bytes have arrived.
    pub fn stream(&self) -> DecodeStream<'_> {
        self.stream_with(false)
    }

    /// Streaming detokenizer, leaving out special tokens when `skip_special_tokens`.
    pub fn stream_with(&self, skip_special_tokens: bool) -> DecodeStream<'_> {
        DecodeStream {
            inner: self.inner.decode_stream(skip_special_tokens),
        }
    }
}

type InnerStream<'a> = tokenizers::DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Incremental decoder returned by [`TextTokenizer::stream`].
pub struct DecodeStream<'a> {
    inner: InnerStream<'a>,
}

impl DecodeStream<'_> {
    /// Feeds one id; returns the new text it completes, or `None` while a character is still
    /// incomplete (or the token adds no text).
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner
            .step(id)
            .map_err(|e| Error::Runtime(format!("tokenizer: cannot decode id {id}: {e}")))
    }
}

/// Reads a JSON file; `None` when it does not exist.
pub(crate) fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    let text = match crate::checkpoint::input::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Runtime(format!("{}: invalid JSON: {e}", path.display())))
}

/// The special tokens that are set, as (`bos_token`, text) pairs in [`SPECIAL_TOKEN_KEYS`]
/// order: from `tokenizer_config.json`, else `special_tokens_map.json`. A token may be a string
/// or an `AddedToken` object (`{"content": ...}`); `null` means not set.
pub(crate) fn special_tokens(model_dir: &Path) -> Result<Vec<(String, String)>> {
    let tc = read_json_opt(&model_dir.join("tokenizer_config.json"))?;
    let sm = read_json_opt(&model_dir.join("special_tokens_map.json"))?;
    let mut out = Vec::new();
    for key in SPECIAL_TOKEN_KEYS {
        let found = [&tc, &sm]
            .into_iter()
            .flatten()
            .find_map(|j| j.get(key).and_then(token_text));
        if let Some(text) = found {
            out.push((key.to_string(), text));
        }
    }
    Ok(out)
}

/// A special token's text from a string or an `AddedToken` object.
fn token_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(m) => m.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// Token ids from a config value that is a number, a list of numbers, or absent/null.
fn token_ids(v: Option<&Json>) -> Vec<u32> {
    let as_id = |j: &Json| j.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Some(Json::Array(items)) => items.iter().filter_map(as_id).collect(),
        Some(j) => as_id(j).into_iter().collect(),
        None => Vec::new(),
    }
}
