//! compressed-tensors `QuantizationArgs`: parsing with its defaults and validation
//! (compressed-tensors 0.19 `quant_args.py`), and its two serialisations: the JSON in
//! `quantization_config` and the `model_dump()` order that llm-compressor writes to
//! `recipe.yaml`.

use crate::format::pyyaml::Yaml;
use crate::{Error, Result};
use serde_json::{Map, Value};

/// `QuantizationType`: the number format of the quantized values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Int,
    Float,
}

/// `QuantizationStrategy`: the granularity of the scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Tensor,
    Channel,
    Group,
    Block,
    Token,
    TensorGroup,
    AttnHead,
}

/// `dynamic`: `false` (static, calibrated), `true` (computed at run time) or `"local"`
/// (local scales dynamic, global scale static; NVFP4 activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dynamic {
    Static,
    Dynamic,
    Local,
}

/// The role of a set of args in a scheme; it decides the default observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Weights,
    InputActivations,
    OutputActivations,
    /// `kv_cache_scheme`: no observer is filled in.
    KvCache,
}

/// compressed-tensors `QuantizationArgs`, after its validator ran (strategy inferred,
/// `zp_dtype` defaulted) and after llm-compressor resolved the observer.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantArgs {
    pub num_bits: u32,
    /// `type` in compressed-tensors.
    pub kind: QuantType,
    pub symmetric: bool,
    pub group_size: Option<i64>,
    pub strategy: Strategy,
    /// `[rows, cols]` for the block strategy.
    pub block_structure: Option<[i64; 2]>,
    pub dynamic: Dynamic,
    /// `"group"`, `"weight"` or their aliases `"dynamic"`, `"static"`.
    pub actorder: Option<String>,
    pub observer: Option<String>,
    pub observer_kwargs: Map<String, Value>,
    /// A torch dtype name such as `"torch.float8_e4m3fn"`.
    pub scale_dtype: Option<String>,
    /// The zero-point dtype; serialised only for asymmetric args.
    pub zp_dtype: Option<String>,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Tensor => "tensor",
            Strategy::Channel => "channel",
            Strategy::Group => "group",
            Strategy::Block => "block",
            Strategy::Token => "token",
            Strategy::TensorGroup => "tensor_group",
            Strategy::AttnHead => "attn_head",
        }
    }

    fn parse(s: &str) -> Option<Strategy> {
        let all = [
            Strategy::Tensor,
            Strategy::Channel,
            Strategy::Group,
            Strategy::Block,
            Strategy::Token,
            Strategy::TensorGroup,
            Strategy::AttnHead,
        ];
        all.into_iter().find(|st| st.as_str() == s.to_lowercase())
    }
}

impl QuantType {
    pub fn as_str(self) -> &'static str {
        match self {
            QuantType::Int => "int",
            QuantType::Float => "float",
        }
    }
}

impl QuantArgs {
    /// Args as `QuantizationArgs(num_bits=.., type=.., strategy=..)` with every other field
    /// at its default; call [`QuantArgs::finish`] after setting fields.
    pub fn new(num_bits: u32, kind: QuantType, strategy: Strategy) -> QuantArgs {
        QuantArgs {
            num_bits,
            kind,
            symmetric: true,
            group_size: None,
            strategy,
            block_structure: None,
            dynamic: Dynamic::Static,
            actorder: None,
            observer: None,
            observer_kwargs: Map::new(),
            scale_dtype: None,
            zp_dtype: None,
        }
    }

    /// Applies what happens after construction: compressed-tensors' default `zp_dtype`
    /// and llm-compressor's observer resolution (`_apply_observer_overrides`: an explicit
    /// observer stays; otherwise none for `dynamic: true`, else `memoryless_minmax` for
    /// weights and `minmax` for activations).
    pub fn finish(self, role: Role) -> Result<QuantArgs> {
        self.complete(role).map_err(Error::Recipe)
    }

    fn complete(mut self, role: Role) -> Result<QuantArgs, String> {
        if self.zp_dtype.is_none() {
            self.zp_dtype = Some(self.default_zp_dtype()?.to_string());
        }
        if self.observer.is_none() && self.dynamic != Dynamic::Dynamic {
            let default = match role {
                Role::Weights => Some("memoryless_minmax"),
                Role::InputActivations | Role::OutputActivations => Some("minmax"),
                Role::KvCache => None,
            };
            self.observer = default.map(String::from);
        }
        Ok(self)
    }

    fn default_zp_dtype(&self) -> Result<&'static str, String> {
        Ok(match (self.kind, self.num_bits) {
            (QuantType::Float, 4) | (QuantType::Float, 8) => "torch.float8_e4m3fn",
            (QuantType::Float, n) => {
                return Err(format!(
                    "float quantization with num_bits {n} is not defined (4 or 8)"
                ))
            }
            (QuantType::Int, n) if n <= 8 => "torch.int8",
            (QuantType::Int, n) if n <= 16 => "torch.int16",
            (QuantType::Int, _) => "torch.int32",
        })
    }

    fn dynamic_value(&self) -> (Value, Yaml) {
        match self.dynamic {
            Dynamic::Static => (Value::Bool(false), Yaml::Bool(false)),
            Dynamic::Dynamic => (Value::Bool(true), Yaml::Bool(true)),
            Dynamic::Local => (Value::from("local"), Yaml::str("local")),
        }
    }

    /// The serialised `zp_dtype`: compressed-tensors writes it only for asymmetric args.
    fn zp_dtype_out(&self) -> Option<&str> {
        (!self.symmetric)
            .then_some(self.zp_dtype.as_deref())
            .flatten()
    }

    /// The JSON object in `quantization_config.config_groups.*.{weights,..}`.
    pub fn to_json(&self) -> Value {
        let opt = |s: Option<&str>| s.map_or(Value::Null, Value::from);
        let mut m = Map::new();
        m.insert("num_bits".into(), Value::from(self.num_bits));
        m.insert("type".into(), Value::from(self.kind.as_str()));
        m.insert("symmetric".into(), Value::Bool(self.symmetric));
        m.insert(
            "group_size".into(),
            self.group_size.map_or(Value::Null, Value::from),
        );
        m.insert("strategy".into(), Value::from(self.strategy.as_str()));
        let block = self
            .block_structure
            .map_or(Value::Null, |b| Value::from(b.to_vec()));
        m.insert("block_structure".into(), block);
        m.insert("dynamic".into(), self.dynamic_value().0);
        m.insert("actorder".into(), opt(self.actorder.as_deref()));
        m.insert("scale_dtype".into(), opt(self.scale_dtype.as_deref()));
        m.insert("zp_dtype".into(), opt(self.zp_dtype_out()));
        m.insert("observer".into(), opt(self.observer.as_deref()));
        m.insert(
            "observer_kwargs".into(),
            Value::Object(self.observer_kwargs.clone()),
        );
        Value::Object(m)
    }

    /// `model_dump()` in field order, as written into `recipe.yaml`.
    pub(crate) fn to_yaml(&self) -> Yaml {
        let opt = |s: Option<&str>| s.map_or(Yaml::Null, Yaml::str);
        let block = self.block_structure.map_or(Yaml::Null, |b| {
            Yaml::Seq(b.iter().map(|v| Yaml::int(*v)).collect())
        });
        let kwargs = self
            .observer_kwargs
            .iter()
            .map(|(k, v)| (k.clone(), Yaml::from_json(v)));
        let entries = vec![
            ("num_bits", Yaml::int(self.num_bits)),
            ("type", Yaml::str(self.kind.as_str())),
            ("symmetric", Yaml::Bool(self.symmetric)),
            ("group_size", self.group_size.map_or(Yaml::Null, Yaml::int)),
            ("strategy", Yaml::str(self.strategy.as_str())),
            ("block_structure", block),
            ("dynamic", self.dynamic_value().1),
            ("actorder", opt(self.actorder.as_deref())),
            ("scale_dtype", opt(self.scale_dtype.as_deref())),
            ("zp_dtype", opt(self.zp_dtype_out())),
            ("observer", opt(self.observer.as_deref())),
            ("observer_kwargs", Yaml::Map(kwargs.collect())),
        ];
        Yaml::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// Parses a recipe's `weights:` / `input_activations:` / `output_activations:` mapping
    /// (`path` names it in errors) and validates it as compressed-tensors does.
    pub fn from_value(v: &Value, role: Role, path: &str) -> Result<QuantArgs> {
        let map = v
            .as_object()
            .ok_or_else(|| Error::Recipe(format!("{path}: expected a mapping")))?;
        let mut a = QuantArgs::new(8, QuantType::Int, Strategy::Tensor);
        let mut strategy = None;
        for (key, val) in map {
            let at = format!("{path}.{key}");
            match key.as_str() {
                "num_bits" => a.num_bits = get_u32(val, &at)?,
                "type" => a.kind = parse_type(val, &at)?,
                "symmetric" => a.symmetric = get_bool(val, &at)?,
                "group_size" => a.group_size = opt_i64(val, &at)?,
                "strategy" => strategy = parse_strategy(val, &at)?,
                "block_structure" => a.block_structure = parse_block(val, &at)?,
                "dynamic" => a.dynamic = parse_dynamic(val, &at)?,
                "actorder" => a.actorder = actorder_value(val, &at)?,
                "scale_dtype" => a.scale_dtype = parse_dtype(val, &at)?,
                "zp_dtype" => a.zp_dtype = parse_dtype(val, &at)?,
                "observer" => a.observer = opt_str(val, &at)?,
                "observer_kwargs" => {
                    a.observer_kwargs = val
                        .as_object()
                        .cloned()
                        .ok_or_else(|| Error::Recipe(format!("{at}: expected a mapping")))?
                }
                _ => return Err(Error::Recipe(format!("{path}: unknown key `{key}`"))),
            }
        }
        let at_path = |m: String| Error::Recipe(format!("{path}: {m}"));
        a.strategy = a.validate(strategy).map_err(at_path)?;
        a.complete(role).map_err(at_path)
    }

    /// compressed-tensors' `validate_model_after`: infers the strategy and checks that
    /// strategy, group size, block structure and dynamic fit together.
    fn validate(&self, strategy: Option<Strategy>) -> Result<Strategy, String> {
        let gs = self.group_size;
        if gs.is_some_and(|g| g < -1) {
            return Err(format!("invalid group_size {}", gs.unwrap_or_default()));
        }
        let strategy = match (strategy, gs) {
            (Some(s), _) => s,
            (None, None) => Strategy::Tensor,
            (None, Some(g)) if g > 0 => Strategy::Group,
            (None, Some(-1)) => Strategy::Channel,
            (None, Some(g)) => return Err(format!("invalid group_size {g}")),
        };
        let grouped = matches!(strategy, Strategy::Group | Strategy::TensorGroup);
        if strategy == Strategy::Token && self.dynamic == Dynamic::Static {
            return Err("static token quantization is impossible: set dynamic: true".into());
        }
        if grouped && gs.is_none_or(|g| g <= 0) {
            return Err(format!(
                "strategy {} needs a positive group_size",
                strategy.as_str()
            ));
        }
        if !grouped && gs.is_some_and(|g| g > 0) {
            return Err("group_size needs strategy group or tensor_group".into());
        }
        if (strategy == Strategy::Block) != self.block_structure.is_some() {
            return Err("strategy block and block_structure go together".into());
        }
        if self.dynamic != Dynamic::Static {
            let ok = matches!(
                strategy,
                Strategy::Token | Strategy::Tensor | Strategy::TensorGroup | Strategy::Group
            );
            if !ok {
                return Err(format!(
                    "dynamic quantization cannot use strategy {}",
                    strategy.as_str()
                ));
            }
            if self.dynamic == Dynamic::Local && strategy != Strategy::TensorGroup {
                return Err("dynamic: local needs strategy tensor_group".into());
            }
        }
        Ok(strategy)
    }
}

fn get_bool(v: &Value, at: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| Error::Recipe(format!("{at}: expected true or false")))
}

fn get_u32(v: &Value, at: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Error::Recipe(format!("{at}: expected a non-negative integer")))
}

fn opt_i64(v: &Value, at: &str) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::Recipe(format!("{at}: expected an integer or null"))),
    }
}

fn opt_str(v: &Value, at: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(Error::Recipe(format!("{at}: expected a string or null"))),
    }
}

fn parse_type(v: &Value, at: &str) -> Result<QuantType> {
    match v.as_str().map(str::to_lowercase).as_deref() {
        Some("int") => Ok(QuantType::Int),
        Some("float") => Ok(QuantType::Float),
        _ => Err(Error::Recipe(format!("{at}: expected int or float"))),
    }
}

fn parse_strategy(v: &Value, at: &str) -> Result<Option<Strategy>> {
    match opt_str(v, at)? {
        None => Ok(None),
        Some(s) => Strategy::parse(&s).map(Some).ok_or_else(|| {
            Error::Recipe(format!(
                "{at}: unknown strategy `{s}` (tensor, channel, group, block, token, \
                 tensor_group, attn_head)"
            ))
        }),
    }
}

fn parse_block(v: &Value, at: &str) -> Result<Option<[i64; 2]>> {
    let bad = || Error::Recipe(format!("{at}: expected [rows, cols]"));
    let dims: Vec<i64> = match v {
        Value::Null => return Ok(None),
        // The legacy "2x4" spelling.
        Value::String(s) => s
            .split('x')
            .map(|p| p.trim().parse().map_err(|_| bad()))
            .collect::<Result<_>>()?,
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_i64().ok_or_else(bad))
            .collect::<Result<_>>()?,
        _ => return Err(bad()),
    };
    match dims[..] {
        [r, c] => Ok(Some([r, c])),
        _ => Err(bad()),
    }
}

fn parse_dynamic(v: &Value, at: &str) -> Result<Dynamic> {
    match v {
        Value::Bool(false) => Ok(Dynamic::Static),
        Value::Bool(true) => Ok(Dynamic::Dynamic),
        Value::String(s) if s.eq_ignore_ascii_case("local") => Ok(Dynamic::Local),
        _ => Err(Error::Recipe(format!(
            "{at}: expected true, false or local"
        ))),
    }
}

/// `actorder` as compressed-tensors 0.19 validates it: `weight`, its alias `static`, or
/// null / false; `group` / `dynamic` / true were removed, with these messages.
pub(crate) fn actorder_value(v: &Value, at: &str) -> Result<Option<String>> {
    match v {
        Value::Null | Value::Bool(false) => Ok(None),
        Value::Bool(true) => Err(Error::Recipe(format!(
            "{at}: actorder=True previously mapped to ActivationOrdering.GROUP, which has \
             been removed. Consider using actorder='weight' instead."
        ))),
        Value::String(s) => match s.to_lowercase().as_str() {
            "group" | "dynamic" => Err(Error::Recipe(format!(
                "{at}: actorder='{s}' has been removed. Consider using actorder='weight' or \
                 actorder=None instead."
            ))),
            lower @ ("weight" | "static") => Ok(Some(lower.to_string())),
            _ => Err(Error::Recipe(format!(
                "{at}: unknown actorder `{s}` (weight, static or null)"
            ))),
        },
        _ => Err(Error::Recipe(format!(
            "{at}: expected weight, static or null"
        ))),
    }
}

/// Torch dtype names accepted as `scale_dtype` / `zp_dtype` (with or without `torch.`),
/// with their canonical `str(dtype)`.
const DTYPES: &[(&str, &str)] = &[
    ("float8_e4m3fn", "float8_e4m3fn"),
    ("float8_e4m3fnuz", "float8_e4m3fnuz"),
    ("float8_e5m2", "float8_e5m2"),
    ("float8_e5m2fnuz", "float8_e5m2fnuz"),
    ("float8_e8m0fnu", "float8_e8m0fnu"),
    ("float4_e2m1fn_x2", "float4_e2m1fn_x2"),
    ("bfloat16", "bfloat16"),
    ("float16", "float16"),
    ("half", "float16"),
    ("float32", "float32"),
    ("float", "float32"),
    ("float64", "float64"),
    ("double", "float64"),
    ("uint8", "uint8"),
    ("int8", "int8"),
    ("int16", "int16"),
    ("short", "int16"),
    ("int32", "int32"),
    ("int", "int32"),
    ("int64", "int64"),
    ("long", "int64"),
    ("uint16", "uint16"),
    ("uint32", "uint32"),
    ("uint64", "uint64"),
    ("bool", "bool"),
];

fn parse_dtype(v: &Value, at: &str) -> Result<Option<String>> {
    let Some(s) = opt_str(v, at)? else {
        return Ok(None);
    };
    let name = s.strip_prefix("torch.").unwrap_or(&s);
    DTYPES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, canon)| Some(format!("torch.{canon}")))
        .ok_or_else(|| Error::Recipe(format!("{at}: no such torch dtype `torch.{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn infers_strategy_and_defaults() {
        let a = QuantArgs::from_value(
            &json!({"num_bits": 4, "group_size": 128}),
            Role::Weights,
            "w",
        )
        .unwrap();
        assert_eq!(a.strategy, Strategy::Group);
        assert_eq!(a.observer.as_deref(), Some("memoryless_minmax"));
        assert_eq!(a.zp_dtype.as_deref(), Some("torch.int8"));
        let dynamic = json!({"type": "FLOAT", "strategy": "Token", "dynamic": true});
        let a = QuantArgs::from_value(&dynamic, Role::InputActivations, "i").unwrap();
        assert_eq!(
            (a.kind, a.strategy, a.observer.clone()),
            (QuantType::Float, Strategy::Token, None)
        );
    }

    #[test]
    fn rejects_what_compressed_tensors_rejects() {
        let cases = [
            (json!({"strategy": "token"}), "set dynamic: true"),
            (json!({"strategy": "group"}), "positive group_size"),
            (
                json!({"group_size": 64, "strategy": "channel"}),
                "needs strategy group",
            ),
            (json!({"strategy": "block"}), "block_structure go together"),
            (json!({"num_bits": 6, "type": "float"}), "num_bits 6"),
            (json!({"bits": 8}), "unknown key `bits`"),
            (json!({"scale_dtype": "torch.nope"}), "no such torch dtype"),
        ];
        for (v, want) in cases {
            let err = QuantArgs::from_value(&v, Role::Weights, "w")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
