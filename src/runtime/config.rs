//! The model description the runtime needs, read from a Hugging Face `config.json`.
//!
//! Supported: the Llama family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`). Both config styles are read: the classic one (`rope_theta` +
//! `rope_scaling`, transformers 4) and transformers 5's `rope_parameters`. Quantization: none,
//! compressed-tensors `float-quantized` FP8_DYNAMIC (FP8 weights with one scale per output
//! channel, FP8 activations with one dynamic scale per token), or the other presets' config
//! groups ([`WeightScheme`]), static per-tensor input scales included, and an FP8 per-tensor
//! `kv_cache_scheme`. Anything else is refused with [`Error::Unsupported`] naming the key at
//! fault.

use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

mod schemes;
pub use schemes::{SchemeGroup, WeightScheme};

/// The architecture families the runtime implements. They share one forward pass; the
/// differences are flags on [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Arch {
    /// The `architectures[0]` name (or `model_type`) of a supported family.
    fn parse(name: &str) -> Option<Arch> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Arch::Llama),
            "MistralForCausalLM" | "mistral" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// `rope_type` of the config; only the two the Llama family uses are supported.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `default`: `inv_freq[i] = 1 / theta^(2i/d)`.
    None,
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// How the Linear layers of the checkpoint are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantization {
    /// Every weight in a float dtype (BF16/F16/F32).
    None,
    /// compressed-tensors FP8_DYNAMIC: every Linear except those matched by `ignore` holds
    /// F8_E4M3 codes plus a per-output-channel `weight_scale`; activations are quantized per
    /// token at run time. `ignore` entries are module names, or regexes prefixed with `re:`.
    Fp8Dynamic { ignore: Vec<String> },
    /// Any other compressed-tensors checkpoint `qforge quantize` writes (FP8_BLOCK, W8A8,
    /// W8A16, W4A16, W4A16_ASYM, NVFP4A16, MXFP4A16, or a mix of them): each Linear takes the
    /// scheme of the group whose `targets` match it ([`Quantization::scheme_for`]).
    Compressed {
        groups: Vec<SchemeGroup>,
        ignore: Vec<String>,
    },
}

/// Everything the runtime reads from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always; Llama/Qwen3 when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama/Qwen3 when `attention_bias`; never Qwen2).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before rope (Qwen3).
    pub qk_norm: bool,
    pub max_position_embeddings: usize,
    /// Mistral's sliding window, when the config enables one: the runtime refuses contexts
    /// longer than it (it does not implement the window).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` as a list (configs give one id or several).
    pub eos_token_ids: Vec<u32>,
    pub quantization: Quantization,
    /// `quantization_config.kv_cache_scheme` is FP8 per tensor: every layer's attention holds
    /// `k_scale`/`v_scale`, and keys and values go through FP8 in the KV cache, as vLLM runs
    /// such a checkpoint by default (see docs/runtime.md).
    pub kv_cache_fp8: bool,
}

fn unsupported(msg: String) -> Error {
    Error::Unsupported(format!("config.json: {msg}"))
}

fn bad(msg: String) -> Error {
    Error::Checkpoint(format!("config.json: {msg}"))
}

/// A required positive integer key.
fn get_usize(v: &Value, key: &str) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => Err(bad(format!("missing key `{key}`"))),
        Some(x) => x
            .as_u64()
            .and_then(|u| usize::try_from(u).ok())
            .filter(|&u| u > 0)
            .ok_or_else(|| bad(format!("`{key}` = {x} is not a positive integer"))),
    }
}

/// An optional number (`None` when absent or null).
fn get_f64(v: &Value, key: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{key}` = {x} is not a number"))),
    }
}

fn get_bool(v: &Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(x) => Err(bad(format!("`{key}` = {x} is not true/false"))),
    }
}

/// A token id key that may be absent, null, one id or a list of ids.
fn get_ids(v: &Value, key: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| bad(format!("`{key}` = {x} is not a token id")))
    };
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text =
            crate::checkpoint::input::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{}: invalid JSON: {e}", path.display())))?;
        ModelConfig::from_json(&v)
    }

    /// Parses a config.json value. Unknown architectures, activations, rope types and
    /// quantization schemes give [`Error::Unsupported`]; missing or malformed keys give
    /// [`Error::Checkpoint`].
    pub fn from_json(v: &Value) -> Result<ModelConfig> {
        if !v.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        let arch = parse_arch(v)?;
        let act = match v.get("hidden_act") {
            None => "silu",
            Some(Value::String(s)) => s.as_str(),
            Some(x) => return Err(bad(format!("`hidden_act` = {x} is not a string"))),
        };
        if act != "silu" {
            return Err(unsupported(format!(
                "hidden_act `{act}` is not supported (only silu)"
            )));
        }
        let hidden_size = get_usize(v, "hidden_size")?;
        let num_heads = get_usize(v, "num_attention_heads")?;
        let num_kv_heads = match v.get("num_key_value_heads") {
            None | Some(Value::Null) => num_heads,
            Some(_) => get_usize(v, "num_key_value_heads")?,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => hidden_size / num_heads,
            Some(_) => get_usize(v, "head_dim")?,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!("head_dim {head_dim} must be even and > 0")));
        }
        let attention_bias = get_bool(v, "attention_bias", false)?;
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size")?,
            num_layers: get_usize(v, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: get_usize(v, "vocab_size")?,
            rms_norm_eps: parse_eps(v)?,
            rope: parse_rope(v)?,
            tie_word_embeddings: get_bool(v, "tie_word_embeddings", false)?,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch != Arch::Qwen2 && attention_bias,
            mlp_bias: get_bool(v, "mlp_bias", false)?,
            qk_norm: arch == Arch::Qwen3,
            max_position_embeddings: get_usize(v, "max_position_embeddings")?,
            sliding_window: parse_sliding_window(v, arch)?,
            bos_token_id: get_ids(v, "bos_token_id")?.first().copied(),
            eos_token_ids: get_ids(v, "eos_token_id")?,
            quantization: parse_quantization(v)?,
            kv_cache_fp8: parse_kv_cache_scheme(v)?,
        };
        Ok(cfg)
    }

    /// Width of the concatenated query heads (`num_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// `rms_norm_eps`: a positive number (1e-6 when absent); a zero or negative epsilon would
/// divide by zero or take the root of a negative number on an all-zero row.
fn parse_eps(v: &Value) -> Result<f64> {
    let eps = get_f64(v, "rms_norm_eps")?.unwrap_or(1e-6);
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(bad(format!(
            "`rms_norm_eps` = {eps} must be a positive number"
        )));
    }
    Ok(eps)
}

/// `architectures[0]`, or `model_type` when `architectures` is absent. A present
/// `architectures` must list model class names: an empty list, `null` or a number is refused
/// rather than silently replaced by `model_type`.
fn parse_arch(v: &Value) -> Result<Arch> {
    let name = match v.get("architectures") {
        Some(a) => a
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad(format!(
                    "`architectures` = {a} must be a list of model class names"
                ))
            })?,
        None => v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `architectures` or `model_type`".into()))?,
    };
    Arch::parse(name).ok_or_else(|| {
        unsupported(format!(
            "architecture `{name}` is not supported (supported: LlamaForCausalLM, \
             MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)"
        ))
    })
}

/// Both styles: transformers 5 `rope_parameters` {rope_theta, rope_type, ...}, or the classic
/// `rope_theta` + `rope_scaling` {rope_type | type, ...}.
fn parse_rope(v: &Value) -> Result<RopeConfig> {
    let (params, theta, where_) = match v.get("rope_parameters").filter(|p| !p.is_null()) {
        Some(p) => (Some(p), get_f64(p, "rope_theta")?, "rope_parameters"),
        None => (
            v.get("rope_scaling").filter(|p| !p.is_null()),
            get_f64(v, "rope_theta")?,
            "rope_scaling",
        ),
    };
    let theta = theta.unwrap_or(10000.0);
    if theta <= 0.0 || !theta.is_finite() {
        return Err(bad(format!("rope_theta {theta} must be a positive number")));
    }
    let Some(p) = params else {
        return Ok(RopeConfig {
            theta,
            scaling: RopeScaling::None,
        });
    };
    if !p.is_object() {
        return Err(bad(format!("`{where_}` = {p} is not an object")));
    }
    if let Some(f) = get_f64(p, "partial_rotary_factor")? {
        if f != 1.0 {
            return Err(unsupported(format!(
                "{where_}.partial_rotary_factor {f} is not supported"
            )));
        }
    }
    let kind = match p.get("rope_type").or_else(|| p.get("type")) {
        None | Some(Value::Null) => "default",
        Some(Value::String(k)) => k.as_str(),
        Some(x) => return Err(bad(format!("{where_}.rope_type = {x} is not a string"))),
    };
    let need = |key: &str| -> Result<f64> {
        get_f64(p, key)?.ok_or_else(|| bad(format!("{where_}: llama3 rope needs `{key}`")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(unsupported(format!(
                "{where_}: rope_type `{other}` is not supported (default, llama3)"
            )))
        }
    };
    if let RopeScaling::Llama3 {
        low_freq_factor,
        high_freq_factor,
        ..
    } = scaling
    {
        if high_freq_factor <= low_freq_factor {
            return Err(bad(format!(
                "{where_}: high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
            )));
        }
    }
    Ok(RopeConfig { theta, scaling })
}

/// Mistral applies its window whenever `sliding_window` is set; Qwen2 only with
/// `use_sliding_window: true`; Llama/Qwen3 never (for our purposes).
fn parse_sliding_window(v: &Value, arch: Arch) -> Result<Option<usize>> {
    let active = match arch {
        Arch::Mistral => true,
        Arch::Qwen2 | Arch::Qwen3 => get_bool(v, "use_sliding_window", false)?,
        Arch::Llama => false,
    };
    match v.get("sliding_window") {
        Some(w) if active && !w.is_null() => Ok(Some(get_usize(v, "sliding_window")?)),
        _ => Ok(None),
    }
}

/// Accepts no `quantization_config`, compressed-tensors FP8_DYNAMIC (its own variant, the
/// W8A8-FP8 compute path), or any set of config groups whose weights are one of the formats
/// `qforge quantize` writes ([`WeightScheme`]).
fn parse_quantization(v: &Value) -> Result<Quantization> {
    let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(Quantization::None);
    };
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("?");
    if method != "compressed-tensors" {
        return Err(unsupported(format!(
            "quantization_config.quant_method `{method}` is not supported (compressed-tensors only)"
        )));
    }
    let groups = q
        .get("config_groups")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("quantization_config.config_groups is missing".into()))?;
    if groups.is_empty() {
        return Err(bad("quantization_config.config_groups is empty".into()));
    }
    let ignore = parse_ignore(q)?;
    let format = q.get("format").and_then(Value::as_str).unwrap_or("?");
    if groups.len() == 1 && format == "float-quantized" {
        let (name, g) = groups.iter().next().expect("one group");
        let fp8_channel = g
            .get("weights")
            .and_then(|w| w.get("strategy"))
            .is_some_and(|s| s == "channel");
        // Static input activations go the generic way (a group with `input_scale`s).
        let static_input = g
            .get("input_activations")
            .and_then(|a| a.get("dynamic"))
            .is_some_and(|d| d == false);
        if fp8_channel && !static_input {
            check_fp8_dynamic_group(name, g)?;
            return Ok(Quantization::Fp8Dynamic { ignore });
        }
    }
    let groups = groups
        .iter()
        .map(|(name, g)| schemes::parse_group(name, g, format))
        .collect::<Result<Vec<_>>>()?;
    Ok(Quantization::Compressed { groups, ignore })
}

/// `quantization_config.kv_cache_scheme`: absent/null, or FP8 (E4M3) symmetric per tensor
/// with static scales, the one llm-compressor writes as `k_scale`/`v_scale` per layer (vLLM
/// also accepts `attn_head`, per-head scales; not supported here).
fn parse_kv_cache_scheme(v: &Value) -> Result<bool> {
    let Some(k) = v
        .get("quantization_config")
        .and_then(|q| q.get("kv_cache_scheme"))
        .filter(|k| !k.is_null())
    else {
        return Ok(false);
    };
    let at = "quantization_config.kv_cache_scheme";
    let want: [(&str, Value); 5] = [
        ("type", Value::from("float")),
        ("num_bits", Value::from(8)),
        ("strategy", Value::from("tensor")),
        ("symmetric", Value::from(true)),
        ("dynamic", Value::from(false)),
    ];
    for (key, expected) in want {
        let got = k.get(key).unwrap_or(&Value::Null);
        if *got != expected {
            return Err(unsupported(format!(
                "{at}.{key} = {got} is not supported (only FP8 per-tensor static scales: {key} {expected})"
            )));
        }
    }
    Ok(true)
}

fn parse_ignore(q: &Value) -> Result<Vec<String>> {
    match q.get("ignore") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("quantization_config.ignore must list strings".into())),
        Some(_) => Err(bad("quantization_config.ignore must be a list".into())),
    }
}

fn check_fp8_dynamic_group(name: &str, g: &Value) -> Result<()> {
    let at = format!("quantization_config.config_groups.{name}");
    let targets: Vec<&str> = g
        .get("targets")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if targets != ["Linear"] {
        return Err(unsupported(format!(
            "{at}.targets {targets:?} is not supported (only [\"Linear\"])"
        )));
    }
    check_fp8_args(&format!("{at}.weights"), g.get("weights"), "channel", false)?;
    check_fp8_args(
        &format!("{at}.input_activations"),
        g.get("input_activations"),
        "token",
        true,
    )?;
    if g.get("output_activations").is_some_and(|o| !o.is_null()) {
        return Err(unsupported(format!(
            "{at}.output_activations is not supported"
        )));
    }
    Ok(())
}

/// One quantization-args block must be float, 8 bits, symmetric, with the given strategy and
/// dynamic flag; the message names the first field that differs.
fn check_fp8_args(at: &str, args: Option<&Value>, strategy: &str, dynamic: bool) -> Result<()> {
    let Some(a) = args.filter(|a| !a.is_null()) else {
        return Err(unsupported(format!(
            "{at} is missing (only FP8_DYNAMIC, W8A8 float, is supported)"
        )));
    };
    let want: [(&str, Value); 5] = [
        ("type", Value::from("float")),
        ("num_bits", Value::from(8)),
        ("symmetric", Value::from(true)),
        ("strategy", Value::from(strategy)),
        ("dynamic", Value::from(dynamic)),
    ];
    for (key, expected) in want {
        let got = a.get(key).unwrap_or(&Value::Null);
        if *got != expected {
            return Err(unsupported(format!(
                "{at}.{key} = {got} is not supported (FP8_DYNAMIC needs {expected})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 100, "max_position_embeddings": 128, "rms_norm_eps": 1e-5})
    }

    #[test]
    fn defaults_and_qwen_flags() {
        let c = ModelConfig::from_json(&base()).unwrap();
        assert_eq!((c.head_dim, c.rope.theta), (16, 10000.0));
        assert!(!c.qkv_bias && !c.qk_norm && !c.tie_word_embeddings);
        let mut v = base();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        let c = ModelConfig::from_json(&v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        v["architectures"] = json!(["Qwen3ForCausalLM"]);
        v["head_dim"] = json!(32);
        let c = ModelConfig::from_json(&v).unwrap();
        assert!(c.qk_norm && !c.qkv_bias && c.head_dim == 32);
    }

    #[test]
    fn refusals_name_the_key() {
        let mut v = base();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = ModelConfig::from_json(&v).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)) && e.to_string().contains("GPT2LMHeadModel"));
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn malformed_values_are_refused_by_key() {
        let cases = [
            ("rope_scaling", json!("x"), "rope_scaling"),
            ("rope_scaling", json!({"type": 3}), "rope_type"),
            ("rope_parameters", json!([1]), "rope_parameters"),
            ("rms_norm_eps", json!(-1), "rms_norm_eps"),
            ("rms_norm_eps", json!(0.0), "rms_norm_eps"),
            ("architectures", json!([]), "architectures"),
            ("architectures", json!(null), "architectures"),
            ("architectures", json!([123]), "architectures"),
            ("hidden_act", json!(5), "hidden_act"),
            ("hidden_act", json!(null), "hidden_act"),
        ];
        for (key, value, culprit) in cases {
            let mut v = base();
            v["model_type"] = json!("llama");
            v[key] = value.clone();
            let e = ModelConfig::from_json(&v)
                .map(|_| format!("{key} = {value} accepted"))
                .unwrap_or_else(|e| e.to_string());
            assert!(e.contains(culprit) && !e.contains("accepted"), "{e}");
        }
        // Absent keys keep their defaults.
        let mut v = base();
        v.as_object_mut().unwrap().remove("architectures");
        v["model_type"] = json!("llama");
        assert_eq!(ModelConfig::from_json(&v).unwrap().arch, Arch::Llama);
    }
}
