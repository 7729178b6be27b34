//! The model as vLLM builds it for a Llama-family checkpoint: fused `qkv_proj`
//! (`QKVParallelLinear`) and `gate_up_proj` (`MergedColumnParallelLinear`), row-parallel
//! `o_proj` and `down_proj` (`RowParallelLinear`), each with the compressed-tensors scheme of
//! its parts. Built from config.json (with its `quantization_config`) and the tensors' names,
//! dtypes and shapes, so it works on a checkpoint on disk and on a quantize plan alike.

use super::scheme::{classify, VllmScheme};
use crate::checkpoint::DType;
use crate::recipe::matcher::Matcher;
use crate::recipe::{QuantArgs, Role};
use crate::{Error, Result};
use serde_json::Value;

/// The sizes of config.json that decide how vLLM splits the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
}

/// How vLLM splits a Linear across tensor-parallel ranks (`vllm/model_executor/layers/linear.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// `QKVParallelLinear`: q, k, v fused; output features split by heads, KV heads
    /// replicated when there are fewer than ranks.
    Qkv,
    /// `MergedColumnParallelLinear`: gate and up fused, output features split.
    MergedColumn,
    /// `RowParallelLinear`: input features split.
    Row,
}

/// One Linear layer of vLLM's model.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// vLLM's name, e.g. `model.layers.0.self_attn.qkv_proj`.
    pub name: String,
    /// The checkpoint's modules it fuses, in order (q, k, v; gate, up; or one).
    pub parts: Vec<String>,
    pub parallel: Parallel,
    pub in_features: usize,
    /// Output features of each part, before any split.
    pub out_features: Vec<usize>,
    /// The scheme (`None`: unquantized), or why vLLM finds none for this layer.
    pub scheme: std::result::Result<Option<VllmScheme>, String>,
}

/// One stored tensor (for the memory per rank).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Tensor {
    pub fn nbytes(&self) -> u64 {
        let n: usize = self.shape.iter().product();
        (n * self.dtype.size()) as u64
    }
}

/// What the serving check looks at.
#[derive(Debug, Clone)]
pub struct ServingModel {
    pub dims: Dims,
    pub layers: Vec<Layer>,
    pub tensors: Vec<Tensor>,
    /// The schemes used (vLLM class names), in first-use order.
    pub schemes: Vec<VllmScheme>,
}

fn bad(msg: String) -> Error {
    Error::Checkpoint(format!("config.json: {msg}"))
}

fn get_usize(config: &Value, key: &str) -> Result<Option<usize>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&u| u > 0)
            .map(|u| Some(u as usize))
            .ok_or_else(|| bad(format!("`{key}` = {v} is not a positive integer"))),
    }
}

fn required(config: &Value, key: &str) -> Result<usize> {
    get_usize(config, key)?.ok_or_else(|| bad(format!("missing key `{key}`")))
}

impl Dims {
    /// The sizes of a Llama-family config.json.
    pub fn from_config(config: &Value) -> Result<Dims> {
        let hidden = required(config, "hidden_size")?;
        let heads = required(config, "num_attention_heads")?;
        Ok(Dims {
            layers: required(config, "num_hidden_layers")?,
            hidden,
            intermediate: required(config, "intermediate_size")?,
            heads,
            kv_heads: get_usize(config, "num_key_value_heads")?.unwrap_or(heads),
            head_dim: get_usize(config, "head_dim")?.unwrap_or(hidden / heads),
            vocab: required(config, "vocab_size")?,
            tied: config
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// One config group of `quantization_config`.
struct Group {
    targets: Vec<Matcher>,
    scheme: std::result::Result<Option<VllmScheme>, String>,
}

/// The config groups and ignore list of a compressed-tensors `quantization_config`.
struct QuantConfig {
    groups: Vec<Group>,
    ignore: Vec<Matcher>,
}

fn quant_config(config: &Value) -> Result<QuantConfig> {
    let not_quantized = || {
        Error::Serving(
            "config.json has no compressed-tensors quantization_config: not a quantized \
             checkpoint (qforge check reads the output of `qforge quantize`, or a plan: \
             --model DIR --scheme PRESET)"
                .into(),
        )
    };
    let q = config
        .get("quantization_config")
        .ok_or_else(not_quantized)?;
    if q.get("quant_method").and_then(Value::as_str) != Some("compressed-tensors") {
        return Err(not_quantized());
    }
    let groups = q
        .get("config_groups")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("quantization_config.config_groups is missing".into()))?;
    let global_format = q.get("format").and_then(Value::as_str).unwrap_or("dense");
    let mut out = Vec::new();
    for (name, g) in groups {
        let path = format!("quantization_config.config_groups.{name}");
        let args = |key: &str, role| match g.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => QuantArgs::from_value(v, role, &format!("{path}.{key}")).map(Some),
        };
        let weights = args("weights", Role::Weights)?;
        let inputs = args("input_activations", Role::InputActivations)?;
        let targets = strings(g.get("targets"), &format!("{path}.targets"))?;
        let scheme = match &weights {
            None => Ok(None),
            Some(w) => {
                let format = g.get("format").and_then(Value::as_str);
                classify(w, inputs.as_ref(), format.unwrap_or(global_format)).map(Some)
            }
        };
        out.push(Group {
            targets: targets
                .iter()
                .map(|t| Matcher::new(t))
                .collect::<Result<_>>()?,
            scheme,
        });
    }
    let ignore = strings(q.get("ignore"), "quantization_config.ignore")?;
    Ok(QuantConfig {
        groups: out,
        ignore: ignore
            .iter()
            .map(|t| Matcher::new(t))
            .collect::<Result<_>>()?,
    })
}

fn strings(v: Option<&Value>, path: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad(format!("{path}: {s} is not a string")))
            })
            .collect(),
        Some(other) => Err(bad(format!("{path}: {other} is not a list"))),
    }
}

impl QuantConfig {
    /// The scheme of one checkpoint module, as vLLM's `should_ignore_layer` then
    /// `find_matched_target`: ignored modules are unquantized; a target naming the module
    /// wins over a class target (`Linear`).
    fn scheme_of(&self, module: &str) -> Result<std::result::Result<Option<VllmScheme>, String>> {
        for m in &self.ignore {
            if m.matches_name(module)? {
                return Ok(Ok(None));
            }
        }
        for g in &self.groups {
            for t in &g.targets {
                if t.matches_name(module)? {
                    return Ok(g.scheme.clone());
                }
            }
        }
        let by_class = self
            .groups
            .iter()
            .find(|g| g.targets.iter().any(Matcher::matches_class));
        Ok(by_class.map_or(Ok(None), |g| g.scheme.clone()))
    }
}

impl ServingModel {
    /// The model of a compressed-tensors checkpoint (or plan): `config` with its
    /// `quantization_config`, and every tensor it stores.
    pub fn new(config: &Value, tensors: Vec<Tensor>) -> Result<ServingModel> {
        let q = quant_config(config)?;
        let dims = Dims::from_config(config)?;
        let has = |l: usize| {
            let probe = format!("model.layers.{l}.self_attn.q_proj.");
            tensors.iter().any(|t| t.name.starts_with(&probe))
        };
        if !has(0) {
            return Err(Error::Unsupported(
                "qforge check knows vLLM's Llama-family layout (self_attn.q/k/v/o_proj, \
                 mlp.gate/up/down_proj) only; this checkpoint has no \
                 model.layers.0.self_attn.q_proj tensor"
                    .into(),
            ));
        }
        // Also bounds the work by the tensors: a config cannot ask for more layers than exist.
        if !has(dims.layers - 1) {
            return Err(bad(format!(
                "num_hidden_layers = {} but the checkpoint has no layer {}",
                dims.layers,
                dims.layers - 1
            )));
        }
        let mut layers = Vec::new();
        for l in 0..dims.layers {
            for spec in layer_specs(&dims, l) {
                layers.push(spec.build(&q)?);
            }
        }
        let mut schemes = Vec::new();
        for s in layers
            .iter()
            .filter_map(|l| l.scheme.clone().ok().flatten())
        {
            if !schemes.contains(&s) {
                schemes.push(s);
            }
        }
        Ok(ServingModel {
            dims,
            layers,
            tensors,
            schemes,
        })
    }
}

struct Spec {
    name: String,
    parts: Vec<(String, usize)>,
    parallel: Parallel,
    in_features: usize,
}

fn layer_specs(d: &Dims, l: usize) -> [Spec; 4] {
    let attn = format!("model.layers.{l}.self_attn");
    let mlp = format!("model.layers.{l}.mlp");
    let (q, kv) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let spec = |name: String, parts: Vec<(String, usize)>, parallel, in_features| Spec {
        name,
        parts,
        parallel,
        in_features,
    };
    [
        spec(
            format!("{attn}.qkv_proj"),
            vec![
                (format!("{attn}.q_proj"), q),
                (format!("{attn}.k_proj"), kv),
                (format!("{attn}.v_proj"), kv),
            ],
            Parallel::Qkv,
            d.hidden,
        ),
        spec(
            format!("{attn}.o_proj"),
            vec![(format!("{attn}.o_proj"), d.hidden)],
            Parallel::Row,
            q,
        ),
        spec(
            format!("{mlp}.gate_up_proj"),
            vec![
                (format!("{mlp}.gate_proj"), d.intermediate),
                (format!("{mlp}.up_proj"), d.intermediate),
            ],
            Parallel::MergedColumn,
            d.hidden,
        ),
        spec(
            format!("{mlp}.down_proj"),
            vec![(format!("{mlp}.down_proj"), d.hidden)],
            Parallel::Row,
            d.intermediate,
        ),
    ]
}

impl Spec {
    fn build(self, q: &QuantConfig) -> Result<Layer> {
        let mut schemes = Vec::new();
        for (part, _) in &self.parts {
            schemes.push(q.scheme_of(part)?);
        }
        let first = schemes[0].clone();
        let scheme = if schemes.iter().all(|s| *s == first) {
            first
        } else {
            let short: Vec<&str> = self
                .parts
                .iter()
                .map(|(p, _)| p.rsplit('.').next().unwrap_or(p))
                .collect();
            Err(format!(
                "Found a different quantization configuration for {short:?} in {}. vLLM \
                 requires all to use the same scheme.",
                self.name
            ))
        };
        Ok(Layer {
            name: self.name,
            out_features: self.parts.iter().map(|(_, n)| *n).collect(),
            parts: self.parts.into_iter().map(|(p, _)| p).collect(),
            parallel: self.parallel,
            in_features: self.in_features,
            scheme,
        })
    }
}
