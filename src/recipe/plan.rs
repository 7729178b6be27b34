//! What to quantize: the config groups of a recipe, which Linear module each one takes
//! (compressed-tensors' target/ignore matching), and the `quantization_config` written
//! into `config.json`.

use super::args::QuantArgs;
use super::matcher::Matcher;
use super::scheme::Scheme;
use crate::Result;
use serde_json::{json, Map, Value};

/// compressed-tensors version whose output qforge reproduces.
pub const COMPRESSED_TENSORS_VERSION: &str = "0.19.0";

/// One compressed-tensors config group (`group_0`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigGroup {
    pub name: String,
    pub targets: Vec<String>,
    pub weights: Option<QuantArgs>,
    pub input_activations: Option<QuantArgs>,
    pub output_activations: Option<QuantArgs>,
    /// The compression format of the group (e.g. `float-quantized`).
    pub format: Option<String>,
    /// The scheme qforge's data-free quantizer implements with these args (activation
    /// ordering aside), if any. `None` only in a modifier that calibrates: the
    /// calibration pipeline quantizes such a group from its args.
    pub preset: Option<Scheme>,
    /// The compressed-tensors preset these args are (`FP8`, `W4A16`...), if any.
    pub preset_name: Option<&'static str>,
}

/// The resolved quantization of a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPlan {
    pub groups: Vec<ConfigGroup>,
    /// The recipe's ignore patterns (not the expanded module list).
    pub ignore: Vec<String>,
    pub bypass_divisibility_checks: bool,
    /// FP8 (or INT8) per-tensor `k_scale` / `v_scale` on every attention module, observed
    /// on the calibration data; `None` when the KV cache is not quantized.
    pub kv_cache_scheme: Option<QuantArgs>,
}

impl QuantPlan {
    /// For each Linear module name (in module order), the index of the config group that
    /// quantizes it, or `None` when it is ignored or not targeted.
    ///
    /// As compressed-tensors' `apply_quantization_config`: a module is quantized when some
    /// target matches its name or class (`Linear`) and no ignore entry does. When several
    /// targets match, targets are ordered by `("re:" in t, t)`, name matches before class
    /// matches, and the first one wins; a target listed by several groups belongs to the
    /// last of them.
    pub fn assign(&self, linear_modules: &[String]) -> Result<Vec<Option<usize>>> {
        let ignore = self
            .ignore
            .iter()
            .map(|t| Matcher::new(t))
            .collect::<Result<Vec<_>>>()?;
        // target -> group, later groups overriding earlier ones (Python dict semantics).
        let mut owner: Vec<(String, usize)> = Vec::new();
        for (idx, group) in self.groups.iter().enumerate() {
            for t in &group.targets {
                match owner.iter_mut().find(|(name, _)| name == t) {
                    Some(entry) => entry.1 = idx,
                    None => owner.push((t.clone(), idx)),
                }
            }
        }
        owner.sort_by(|a, b| (a.0.contains("re:"), &a.0).cmp(&(b.0.contains("re:"), &b.0)));
        let targets = owner
            .iter()
            .map(|(t, idx)| Ok((Matcher::new(t)?, *idx)))
            .collect::<Result<Vec<_>>>()?;
        let pick = |name: &str| -> Result<Option<usize>> {
            for m in &ignore {
                if m.matches(name)? {
                    return Ok(None);
                }
            }
            for (m, idx) in &targets {
                if m.matches_name(name)? {
                    return Ok(Some(*idx));
                }
            }
            Ok(targets
                .iter()
                .find(|(m, _)| m.matches_class())
                .map(|(_, idx)| *idx))
        };
        linear_modules.iter().map(|name| pick(name)).collect()
    }

    /// The `quantization_config` object llm-compressor writes into `config.json`, given
    /// the full names of every Linear left unquantized (in module order).
    pub fn quantization_config(&self, ignored: &[String]) -> Value {
        let args = |a: &Option<QuantArgs>| a.as_ref().map_or(Value::Null, QuantArgs::to_json);
        let mut groups = Map::new();
        let mut formats: Vec<&str> = Vec::new();
        for g in &self.groups {
            let format = g.format.as_deref().unwrap_or("dense");
            if !formats.contains(&format) {
                formats.push(format);
            }
            let group = json!({
                "format": format,
                "input_activations": args(&g.input_activations),
                "output_activations": args(&g.output_activations),
                "targets": g.targets,
                "weights": args(&g.weights),
            });
            groups.insert(g.name.clone(), group);
        }
        let format = match formats[..] {
            [] => "dense",
            [one] => one,
            _ => "mixed-precision",
        };
        json!({
            "config_groups": groups,
            "format": format,
            "global_compression_ratio": null,
            "ignore": ignored,
            "kv_cache_scheme": args(&self.kv_cache_scheme),
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
            "sparsity_config": {},
            "transform_config": {},
            "version": COMPRESSED_TENSORS_VERSION,
        })
    }
}
