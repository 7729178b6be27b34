//! Smoothing mappings of SmoothQuant and AWQ: llm-compressor's default mappings per
//! architecture (its mapping registries, as data), and their resolution against a
//! model's module names (compressed-tensors' `match_modules_set`).

use super::matcher::Matcher;
use crate::{Error, Result};

/// One smoothing mapping: the layer whose output is scaled down (`smooth_layer`: a norm,
/// or `v_proj` / `up_proj` for AWQ) and the Linears it feeds, whose input columns are
/// scaled up to compensate (`balance_layers`). Names are module names or `re:` patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub smooth_layer: String,
    pub balance_layers: Vec<String>,
    /// AWQ only: the submodule of the balance layers' common parent whose input is
    /// cached instead of the first balance layer's (`None`: the first balance layer).
    pub activation_hook_target: Option<String>,
}

/// A mapping resolved on a model: one smooth module and its balance modules, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMapping {
    pub smooth_name: String,
    pub balance_names: Vec<String>,
}

/// Which modifier's registry and messages apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    SmoothQuant,
    Awq,
}

impl MappingKind {
    fn modifier(self) -> &'static str {
        match self {
            MappingKind::SmoothQuant => "SmoothQuantModifier",
            MappingKind::Awq => "AWQModifier",
        }
    }
}

/// `DEFAULT_SMOOTHQUANT_MAPPINGS` (`(balance_layers, smooth_layers)` in llm-compressor).
const SMOOTHQUANT_DEFAULT: &[(&str, &[&str])] = &[
    (
        "re:.*input_layernorm",
        &["re:.*q_proj", "re:.*k_proj", "re:.*v_proj"],
    ),
    (
        "re:.*post_attention_layernorm",
        &["re:.*gate_proj", "re:.*up_proj"],
    ),
];

/// AWQ's `default_mappings`: both norms, `o_proj` ← `v_proj` and `down_proj` ← `up_proj`.
const AWQ_DEFAULT: &[(&str, &[&str])] = &[
    (
        "re:.*input_layernorm$",
        &["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"],
    ),
    ("re:.*v_proj$", &["re:.*o_proj$"]),
    (
        "re:.*post_attention_layernorm$",
        &["re:.*gate_proj$", "re:.*up_proj$"],
    ),
    ("re:.*up_proj$", &["re:.*down_proj$"]),
];

/// The dense decoder architectures whose registry entry (in both `MAPPINGS_REGISTRY` and
/// `AWQ_MAPPING_REGISTRY`) is the default mappings above. llm-compressor also falls back
/// to them for an architecture missing from its registries; architectures registered
/// with other mappings (MoE, fused projections, ...) are refused instead.
const DEFAULT_ARCHITECTURES: &[&str] = &[
    "GraniteForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "NanbeigeForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SeedOssForCausalLM",
];

/// The default mappings of llm-compressor's registry for `architecture` (Llama family).
pub fn default_mappings(kind: MappingKind, architecture: &str) -> Result<Vec<Mapping>> {
    if !DEFAULT_ARCHITECTURES.contains(&architecture) {
        return Err(Error::Unsupported(format!(
            "{}: no default mappings for architecture {architecture} (qforge knows those of \
             {}); give `mappings` in the recipe",
            kind.modifier(),
            DEFAULT_ARCHITECTURES.join(", ")
        )));
    }
    Ok(llama_mappings(kind))
}

/// The Llama family's mappings (what the recipe gets when it names none).
pub(crate) fn llama_mappings(kind: MappingKind) -> Vec<Mapping> {
    let table = match kind {
        MappingKind::SmoothQuant => SMOOTHQUANT_DEFAULT,
        MappingKind::Awq => AWQ_DEFAULT,
    };
    table
        .iter()
        .map(|(smooth, balance)| Mapping {
            smooth_layer: smooth.to_string(),
            balance_layers: balance.iter().map(|b| b.to_string()).collect(),
            activation_hook_target: None,
        })
        .collect()
}

/// Resolves `mappings` on a model whose modules are `module_names`, in `named_modules()`
/// order (leaf modules are enough: Linears and norms), as llm-compressor 0.14 does.
///
/// For each mapping, modules are grouped by parent (compressed-tensors'
/// `match_modules_set`): one group per decoder layer. A mapping that matches nothing at
/// all is skipped silently, as llm-compressor skips it; one that matches only some of its
/// names (a model without `v_proj`, say) is an error, with llm-compressor's message.
/// SmoothQuant's `ignore` drops a group whose every module is ignored.
pub fn resolve_mappings(
    kind: MappingKind,
    mappings: &[Mapping],
    ignore: &[String],
    module_names: &[String],
) -> Result<Vec<ResolvedMapping>> {
    let ignore = ignore
        .iter()
        .map(|t| Matcher::new(t))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for mapping in mappings {
        let mut targets = vec![mapping.smooth_layer.clone()];
        targets.extend(mapping.balance_layers.iter().cloned());
        for set in match_modules_set(&targets, module_names).map_err(|e| wrap(kind, e))? {
            let (smooth, balance) = set.split_first().expect("one list per target");
            if smooth.len() > 1 {
                return Err(Error::Recipe(format!(
                    "{}: must match a single smooth layer for each mapping but got {:?} \
                     for mapping {}",
                    kind.modifier(),
                    smooth,
                    mapping.smooth_layer
                )));
            }
            let balance_names: Vec<String> = balance.concat();
            let mut all_ignored = true;
            for name in std::iter::once(&smooth[0]).chain(&balance_names) {
                let mut hit = false;
                for m in &ignore {
                    hit |= m.matches_name(name)?;
                }
                all_ignored &= hit;
            }
            if all_ignored {
                continue;
            }
            out.push(ResolvedMapping {
                smooth_name: smooth[0].clone(),
                balance_names,
            });
        }
    }
    Ok(out)
}

/// SmoothQuant wraps every resolution error in one message pointing at its README.
fn wrap(kind: MappingKind, e: Error) -> Error {
    match (kind, e) {
        (MappingKind::SmoothQuant, Error::Recipe(m)) => Error::Recipe(format!(
            "SmoothQuantModifier: error resolving mappings for given architecture ({m})"
        )),
        (MappingKind::Awq, Error::Recipe(m)) => Error::Recipe(format!("AWQModifier: {m}")),
        (_, other) => other,
    }
}

/// compressed-tensors' `match_modules_set`: for each set of modules sharing a parent, the
/// matches of each target (in target order).
fn match_modules_set(targets: &[String], names: &[String]) -> Result<Vec<Vec<Vec<String>>>> {
    let matchers = targets
        .iter()
        .map(|t| Matcher::new(t))
        .collect::<Result<Vec<_>>>()?;
    let mut sets = Vec::new();
    let mut matches: Vec<Vec<String>> = vec![Vec::new(); targets.len()];
    let mut parent: Option<String> = None;
    for name in names {
        let mut matched = Vec::new();
        for (idx, m) in matchers.iter().enumerate() {
            if !m.matches_name(name)? {
                continue;
            }
            let mut context = common_ancestor(name, parent.as_deref());
            let complete = matches.iter().all(|m| !m.is_empty());
            if complete && Some(&context) != parent.as_ref() {
                sets.push(std::mem::replace(
                    &mut matches,
                    vec![Vec::new(); targets.len()],
                ));
                context = name.clone();
            }
            matches[idx].push(name.clone());
            parent = Some(context);
            matched.push(targets[idx].as_str());
        }
        if matched.len() > 1 {
            return Err(Error::Recipe(format!(
                "module {name} was matched with multiple targets: {}",
                matched.join(", ")
            )));
        }
    }
    let found: Vec<&str> = (0..targets.len())
        .filter(|&i| !matches[i].is_empty())
        .map(|i| targets[i].as_str())
        .collect();
    if found.is_empty() {
        return Ok(sets);
    }
    if found.len() == targets.len() {
        sets.push(matches);
        return Ok(sets);
    }
    let missing: Vec<&str> = (0..targets.len())
        .filter(|&i| matches[i].is_empty())
        .map(|i| targets[i].as_str())
        .collect();
    Err(Error::Recipe(format!(
        "Found a final incomplete set with matches found for keys: {} but no matches found \
         for keys: {}",
        found.join(", "),
        missing.join(", ")
    )))
}

/// `get_lowest_common_ancestor_name([name, parent])`: the longest common dotted prefix.
fn common_ancestor(name: &str, parent: Option<&str>) -> String {
    let names: Vec<&str> = std::iter::once(name).chain(parent).collect();
    let lo = format!(".{}.", names.iter().min().expect("one name"));
    let hi = format!(".{}.", names.iter().max().expect("one name"));
    let common: String = lo
        .chars()
        .zip(hi.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let cut = common.rfind('.').unwrap_or(0);
    common.get(1..cut).unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaf modules of a 2-layer Llama in `named_modules()` order.
    fn llama(layers: usize, with_v: bool) -> Vec<String> {
        let mut names = vec!["model.embed_tokens".to_string()];
        for n in 0..layers {
            let p = format!("model.layers.{n}");
            for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                if m != "v_proj" || with_v {
                    names.push(format!("{p}.self_attn.{m}"));
                }
            }
            for m in ["gate_proj", "up_proj", "down_proj"] {
                names.push(format!("{p}.mlp.{m}"));
            }
            names.push(format!("{p}.input_layernorm"));
            names.push(format!("{p}.post_attention_layernorm"));
        }
        names.extend(["model.norm".to_string(), "lm_head".to_string()]);
        names
    }

    #[test]
    fn awq_defaults_resolve_per_layer() {
        let maps = default_mappings(MappingKind::Awq, "LlamaForCausalLM").unwrap();
        let got = resolve_mappings(MappingKind::Awq, &maps, &[], &llama(2, true)).unwrap();
        let smooth: Vec<&str> = got.iter().map(|m| m.smooth_name.as_str()).collect();
        assert_eq!(
            smooth,
            [
                "model.layers.0.input_layernorm",
                "model.layers.1.input_layernorm",
                "model.layers.0.self_attn.v_proj",
                "model.layers.1.self_attn.v_proj",
                "model.layers.0.post_attention_layernorm",
                "model.layers.1.post_attention_layernorm",
                "model.layers.0.mlp.up_proj",
                "model.layers.1.mlp.up_proj",
            ]
        );
        assert_eq!(
            got[1].balance_names,
            [
                "model.layers.1.self_attn.q_proj",
                "model.layers.1.self_attn.k_proj",
                "model.layers.1.self_attn.v_proj"
            ]
        );
    }

    #[test]
    fn missing_modules_skip_or_fail_as_llm_compressor() {
        let maps = default_mappings(MappingKind::SmoothQuant, "LlamaForCausalLM").unwrap();
        // A mapping none of whose names exist is skipped.
        let absent = [Mapping {
            smooth_layer: "re:.*ln_f".into(),
            balance_layers: vec!["re:.*fc1".into()],
            activation_hook_target: None,
        }];
        let none = resolve_mappings(MappingKind::Awq, &absent, &[], &llama(2, true)).unwrap();
        assert!(none.is_empty());
        // One whose names exist only in part is an error.
        let e = resolve_mappings(MappingKind::SmoothQuant, &maps, &[], &llama(2, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("error resolving mappings")
                && e.contains("no matches found for keys: re:.*v_proj"),
            "{e}"
        );
        // An ignored smooth layer whose balance layers are all ignored is dropped.
        let ignore = vec!["re:.*layers\\.0\\..*".to_string()];
        let got =
            resolve_mappings(MappingKind::SmoothQuant, &maps, &ignore, &llama(2, true)).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| m.smooth_name.contains("layers.1")));
        assert!(default_mappings(MappingKind::Awq, "MixtralForCausalLM").is_err());
    }
}
