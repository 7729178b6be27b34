//! The Linear modules of a model, in module order (the order of `named_modules()` in
//! transformers), from `config.json` and the checkpoint's tensor names and shapes.
//!
//! Rules per architecture (`architectures[0]` in config.json):
//!
//! * `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`:
//!   for each layer `N` in `0..num_hidden_layers` (numeric order),
//!   `model.layers.N.self_attn.{q,k,v,o}_proj` then `model.layers.N.mlp.{gate,up,down}_proj`,
//!   then `lm_head`. Each of these must be stored as a 2-D `<name>.weight`, except
//!   `lm_head`: with tied embeddings there is no `lm_head.weight`, yet `lm_head` is still a
//!   Linear module (sharing the embedding), so it is always listed. Qwen3's
//!   `self_attn.{q,k}_norm` and all other norms are 1-D and are not Linear.
//!   If the checkpoint holds other Linear-looking tensors, or misses one of these, the
//!   generic rule is used instead and a warning says why.
//! * Any other architecture (warning returned): every `<name>.weight` that is 2-D and
//!   whose last name component is not an embedding (`*embed*`, `wte`, `wpe`) or a norm
//!   (`*norm*`, `ln_*`) is a Linear module; `lm_head` is added when absent; order is by
//!   name with numeric components compared as numbers, `lm_head` last.

use crate::{Error, Result};
use serde_json::Value;
use std::cmp::Ordering;

/// Architectures whose module order is known exactly.
const LLAMA_LIKE: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
];

const ATTN: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP: &[&str] = &["gate_proj", "up_proj", "down_proj"];

/// The Linear modules of a model in module order, and a warning (for the caller to print)
/// when the generic rule was used.
pub fn linear_modules(
    config: &Value,
    tensors: &[(String, Vec<usize>)],
) -> Result<(Vec<String>, Option<String>)> {
    let arch = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    let generic = generic_linears(tensors);
    if !LLAMA_LIKE.contains(&arch) {
        let shown = if arch.is_empty() { "none given" } else { arch };
        let warning = format!(
            "config.json: architecture {shown} has no known module order; treating every \
             2-D non-embedding weight as a Linear, ordered by name"
        );
        return Ok((generic, Some(warning)));
    }
    let layers = config
        .get("num_hidden_layers")
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::Checkpoint("config.json: num_hidden_layers is missing".into()))?;
    let known = llama_linears(layers);
    match llama_mismatch(&known, &generic, tensors) {
        None => Ok((known, None)),
        Some(why) => {
            let warning = format!(
                "{arch}: {why}; treating every 2-D non-embedding weight as a Linear, ordered by name"
            );
            Ok((generic, Some(warning)))
        }
    }
}

fn llama_linears(layers: u64) -> Vec<String> {
    let mut names = Vec::new();
    for n in 0..layers {
        names.extend(
            ATTN.iter()
                .map(|p| format!("model.layers.{n}.self_attn.{p}")),
        );
        names.extend(MLP.iter().map(|p| format!("model.layers.{n}.mlp.{p}")));
    }
    names.push("lm_head".into());
    names
}

/// Why the checkpoint does not have exactly the expected Linear modules, if it does not.
fn llama_mismatch(
    known: &[String],
    generic: &[String],
    tensors: &[(String, Vec<usize>)],
) -> Option<String> {
    for name in known.iter().filter(|n| *n != "lm_head") {
        let weight = format!("{name}.weight");
        match tensors.iter().find(|(t, _)| *t == weight) {
            None => return Some(format!("{weight} is missing")),
            Some((_, shape)) if shape.len() != 2 => {
                return Some(format!("{weight} is not 2-D (shape {shape:?})"))
            }
            Some(_) => {}
        }
    }
    let extra = generic.iter().find(|g| !known.contains(g))?;
    Some(format!("unexpected 2-D weight {extra}.weight"))
}

/// The generic rule (see the module docs).
fn generic_linears(tensors: &[(String, Vec<usize>)]) -> Vec<String> {
    let mut names: Vec<String> = tensors
        .iter()
        .filter(|(_, shape)| shape.len() == 2)
        .filter_map(|(name, _)| name.strip_suffix(".weight"))
        .filter(|module| !is_embedding_or_norm(module))
        .map(String::from)
        .collect();
    if !names.iter().any(|n| n == "lm_head") {
        names.push("lm_head".into());
    }
    names.sort_by(|a, b| module_order(a, b));
    names.dedup();
    names
}

fn is_embedding_or_norm(module: &str) -> bool {
    let last = module.rsplit('.').next().unwrap_or(module).to_lowercase();
    last.contains("embed")
        || last == "wte"
        || last == "wpe"
        || last.contains("norm")
        || last.starts_with("ln_")
}

/// Name order with numeric components compared as numbers and `lm_head` last.
fn module_order(a: &str, b: &str) -> Ordering {
    let head = |s: &str| s == "lm_head" || s.starts_with("lm_head.");
    head(a).cmp(&head(b)).then_with(|| {
        let key = |s: &str| -> Vec<(u64, String)> {
            s.split('.')
                .map(|p| match p.parse::<u64>() {
                    Ok(n) => (n, String::new()),
                    Err(_) => (u64::MAX, p.to_string()),
                })
                .collect()
        };
        key(a).cmp(&key(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama_tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![10, 4])];
        for n in 0..layers {
            for p in ATTN {
                t.push((format!("model.layers.{n}.self_attn.{p}.weight"), vec![4, 4]));
            }
            for p in MLP {
                t.push((format!("model.layers.{n}.mlp.{p}.weight"), vec![4, 4]));
            }
            t.push((format!("model.layers.{n}.input_layernorm.weight"), vec![4]));
        }
        t.sort();
        t
    }

    #[test]
    fn layers_in_numeric_order() {
        let cfg = json!({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 11});
        let (names, warning) = linear_modules(&cfg, &llama_tensors(11)).unwrap();
        assert_eq!(warning, None);
        assert_eq!(names.len(), 11 * 7 + 1);
        assert_eq!(names[69], "model.layers.9.mlp.down_proj");
        assert_eq!(names[70], "model.layers.10.self_attn.q_proj");
        assert_eq!(names.last().map(String::as_str), Some("lm_head"));
    }

    #[test]
    fn unknown_architecture_uses_generic_rule() {
        let cfg = json!({"architectures": ["FancyForCausalLM"], "num_hidden_layers": 11});
        let (names, warning) = linear_modules(&cfg, &llama_tensors(11)).unwrap();
        assert!(warning.unwrap().contains("FancyForCausalLM"));
        assert_eq!(names[0], "model.layers.0.mlp.down_proj");
        assert_eq!(names[7], "model.layers.1.mlp.down_proj");
        assert_eq!(names.last().map(String::as_str), Some("lm_head"));
    }

    #[test]
    fn missing_projection_falls_back_with_warning() {
        let cfg = json!({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2});
        let tensors: Vec<_> = llama_tensors(2)
            .into_iter()
            .filter(|(n, _)| !n.contains("1.mlp.up_proj"))
            .collect();
        let (names, warning) = linear_modules(&cfg, &tensors).unwrap();
        assert!(warning
            .unwrap()
            .contains("model.layers.1.mlp.up_proj.weight is missing"));
        assert_eq!(names.len(), 14);
    }
}
