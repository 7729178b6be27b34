//! Checks and pre-computations that need more than one tensor, done before any output is
//! written: llm-compressor's group-size divisibility check, and the NVFP4 global scales
//! that fused projections share.

use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::numerics;
use crate::recipe::Scheme;
use crate::{Error, Result};
use std::collections::HashMap;

/// Refuses a checkpoint without tensors before anything is written. (Whether `qforge verify`
/// could load the output is the command's check, with the runtime's rules:
/// `commands::quantize`.)
pub fn check_source(ck: &Checkpoint) -> Result<()> {
    if ck.tensors().is_empty() {
        return Err(Error::Checkpoint(format!(
            "{}: the checkpoint holds no tensors",
            ck.dir.display()
        )));
    }
    Ok(())
}

/// The projections vLLM fuses, which must share one NVFP4 global scale (llm-compressor's
/// `FUSED_LAYER_NAMES`).
const FUSED: &[&[&str]] = &[
    &["gate_proj", "up_proj"],
    &["q_proj", "k_proj", "v_proj"],
    &["q_a_proj", "kv_a_proj_with_mqa"],
    &["w1", "w3"],
];

/// Refuses group-quantized weights whose column count is not a multiple of the group size,
/// as llm-compressor does: its `validate_group_size_divisibility` lists every layer with
/// `columns >= group_size` and `columns % group_size != 0` (unless `bypass` is set), and
/// compressed-tensors then fails on any remaining one (narrower layers, or bypassed ones)
/// when it quantizes, so no partial group is ever written.
pub fn check_divisibility(
    quantize: &HashMap<String, Scheme>,
    modules: &[String],
    ck: &Checkpoint,
    bypass: bool,
) -> Result<()> {
    let mut listed = Vec::new();
    let mut first_other = None;
    // Every group-quantized weight's width and every failing one, to tell a model too small
    // for the group size (most layers fail) from a few odd layers.
    let mut widths: Vec<usize> = Vec::new();
    let mut failing = Vec::new();
    let mut group_of = None;
    for module in modules {
        let name = format!("{module}.weight");
        let (Some(scheme), Some(t)) = (quantize.get(&name), ck.get(&name)) else {
            continue;
        };
        let (Some(group), Some(&cols)) = (scheme.group_size(), t.shape.get(1)) else {
            continue;
        };
        widths.push(cols);
        group_of.get_or_insert((*scheme, group));
        if cols % group == 0 {
            continue;
        }
        failing.push(format!("{name} (columns={cols}, group_size={group})"));
        if cols >= group && !bypass {
            listed.push(format!("{name} (columns={cols}, group_size={group})"));
        } else if first_other.is_none() {
            first_other = Some((name, *scheme, cols, group));
        }
    }
    if let Some((scheme, group)) = group_of.filter(|_| failing.len() * 2 > widths.len()) {
        return Err(too_small(scheme, group, &widths, &failing));
    }
    if !listed.is_empty() {
        return Err(Error::Quantize(format!(
            "these weights have a column count that is not a multiple of the group size, which \
             group quantization requires (llm-compressor refuses them too): {}; add their \
             modules to the recipe's `ignore`",
            listed.join(", ")
        )));
    }
    match first_other {
        Some((name, scheme, cols, group)) => Err(Error::Quantize(format!(
            "{name}: {cols} columns are not a multiple of {}'s group size {group}, and \
             compressed-tensors cannot quantize a partial group (bypass_divisibility_checks \
             only skips llm-compressor's up-front check); add the module to `ignore`",
            scheme.name()
        ))),
        None => Ok(()),
    }
}

/// The error when most targeted Linears fail the group size: ignoring them (the advice for a
/// few odd layers) would leave little or nothing quantized, so suggest a smaller group.
fn too_small(scheme: Scheme, group: usize, widths: &[usize], failing: &[String]) -> Error {
    let mut distinct = widths.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let list: Vec<String> = distinct.iter().map(usize::to_string).collect();
    // qforge implements the presets' arguments only (no custom group_size in config_groups),
    // so the smaller groups on offer are NVFP4A16's 16 and MXFP4A16's 32.
    let fits: Vec<String> = [Scheme::Mxfp4A16, Scheme::Nvfp4A16]
        .into_iter()
        .filter_map(|s| Some((s, s.group_size()?)))
        .filter(|&(_, g)| g < group && distinct.iter().all(|w| w % g == 0))
        .map(|(s, g)| format!("{} (group {g})", s.name()))
        .collect();
    let advice = if fits.is_empty() {
        "use a preset without groups (FP8_DYNAMIC, W8A8)".to_string()
    } else {
        format!(
            "use a preset with a smaller group that divides them, {}, or one without groups \
             (FP8_DYNAMIC, W8A8)",
            fits.join(" or ")
        )
    };
    Error::Quantize(format!(
        "the model is too small for {}'s group size {group}: its Linear widths (in_features: \
         {}) are mostly not a multiple of the group size, and ignoring those {} of {} layers \
         would leave little quantized: {advice}. Failing: {}",
        scheme.name(),
        list.join(", "),
        failing.len(),
        widths.len(),
        failing.join(", ")
    ))
}

/// The NVFP4 global scale of every NVFP4 weight (by tensor name). Fused projections of
/// one module share the scale of their combined absmax; each other weight has its own.
/// Reads each NVFP4 weight once.
pub fn nvfp4_global_scales(
    quantize: &HashMap<String, Scheme>,
    modules: &[String],
    ck: &Checkpoint,
) -> Result<HashMap<String, f32>> {
    let nvfp4 = |m: &str| quantize.get(&format!("{m}.weight")) == Some(&Scheme::Nvfp4A16);
    let mut sets: Vec<Vec<String>> = Vec::new();
    let mut fused_members: Vec<String> = Vec::new();
    for parent in parents(modules) {
        for names in FUSED {
            let members: Vec<String> = names.iter().map(|n| format!("{parent}.{n}")).collect();
            if !members.iter().all(|m| modules.contains(m)) || !members.iter().any(|m| nvfp4(m)) {
                continue;
            }
            if let Some(odd) = members.iter().find(|m| !nvfp4(m)) {
                return Err(Error::Quantize(format!(
                    "{parent}: {} share one NVFP4 global scale, so they must all be quantized \
                     with NVFP4A16, but {odd} is not (llm-compressor refuses this too)",
                    names.join(", ")
                )));
            }
            fused_members.extend(members.iter().cloned());
            sets.push(members);
        }
    }
    for m in modules {
        if nvfp4(m) && !fused_members.contains(m) {
            sets.push(vec![m.clone()]);
        }
    }
    let mut out = HashMap::new();
    for set in sets {
        let tensors: Vec<&TensorInfo> = set
            .iter()
            .filter_map(|m| ck.get(&format!("{m}.weight")))
            .collect();
        let Some(first) = tensors.first() else {
            continue;
        };
        let mut a = 0.0f32;
        for t in &tensors {
            a = a.max(tensor_absmax(ck, t)?);
        }
        let gs = numerics::nvfp4_global_scale(first.dtype, a);
        out.extend(tensors.iter().map(|t| (t.name.clone(), gs)));
    }
    Ok(out)
}

/// The modules that directly hold some Linear, in first-seen order.
fn parents(modules: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for m in modules {
        if let Some((parent, _)) = m.rsplit_once('.') {
            if !out.contains(&parent) {
                out.push(parent);
            }
        }
    }
    out
}

/// `max |w|` of a 2-D weight, its pages released afterwards; NaN/Inf names the row.
fn tensor_absmax(ck: &Checkpoint, t: &TensorInfo) -> Result<f32> {
    let cols = t.shape.get(1).copied().unwrap_or(0);
    let data = ck.data(t);
    let a = numerics::weight_absmax(&t.name, t.dtype, data, cols)
        .map_err(|e| super::super::stream::locate_bad_row(ck, t, data, 0, e));
    ck.release(t);
    a
}
