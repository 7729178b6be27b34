//! The calibration pipeline against llm-compressor 0.14's outputs on the g128 fixture
//! (`fixtures/calibration`, 32 samples of 64 random token ids).

use crate::support::fixture;
use qforge::calibrate::static_fp8::StaticFp8;
use qforge::calibrate::{LayerTensor, Pipeline};
use qforge::checkpoint::Checkpoint;
use qforge::runtime::config::ModelConfig;
use std::path::Path;

/// The fixture's calibration samples (until `dataset` reads them).
fn g128_ids() -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(fixture("calibration/g128-ids.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Runs the static FP8 + KV-cache calibration of every Linear of g128-bf16.
fn g128_static_fp8() -> Vec<LayerTensor> {
    let model = fixture("schemes/g128-bf16");
    let ck = Checkpoint::open(&model).unwrap();
    let config = ModelConfig::load(&model).unwrap();
    let ids = g128_ids();
    let pipe = Pipeline::new(&ck, &config, 64);
    let mut acts = pipe.embed(&ids).unwrap();
    let mut out = Vec::new();
    let mut sink = |t: LayerTensor| {
        out.push(t);
        Ok(())
    };
    let mut cal = StaticFp8::new([true; 7], true, &mut sink);
    pipe.run(&mut acts, &mut cal, &|_| {}).unwrap();
    out
}

/// `(elements that differ, elements)` of a computed tensor against the reference file's.
fn compare(reference: &Checkpoint, t: &LayerTensor) -> (usize, usize) {
    let r = reference
        .get(&t.name)
        .unwrap_or_else(|| panic!("{} is not in the reference", t.name));
    assert_eq!(r.dtype, t.dtype, "{}", t.name);
    assert_eq!(r.shape, t.shape, "{}", t.name);
    let size = t.dtype.size();
    let theirs = reference.data(r);
    let differ = t
        .data
        .chunks(size)
        .zip(theirs.chunks(size))
        .filter(|(a, b)| a != b)
        .count();
    (differ, t.data.len() / size)
}

/// Whether a tensor is one of the K/V-cache scales (`k_scale`, `v_scale`).
fn is_kv_scale(name: &str) -> bool {
    name.ends_with(".k_scale") || name.ends_with(".v_scale")
}

/// Compares every computed tensor of `select` with llm-compressor's; prints the exact
/// per-tensor counts and returns the names of those that differ.
fn differing(select: impl Fn(&str) -> bool) -> Vec<String> {
    let ours = g128_static_fp8();
    let reference = Checkpoint::open(&fixture("calibration/g128-fp8_static_kv")).unwrap();
    // Per layer: 7 weights, 7 weight scales, 7 input scales, k_scale, v_scale.
    assert_eq!(ours.len(), 2 * 23);
    let mut bad = Vec::new();
    for t in ours.iter().filter(|t| select(&t.name)) {
        let (differ, n) = compare(&reference, t);
        println!("{:<48} {differ:>6} of {n:>6} differ", t.name);
        if differ > 0 {
            bad.push(t.name.clone());
        }
    }
    bad
}

/// FP8 weights, their per-tensor scales and the static input scales of all 14 Linears.
#[test]
fn static_fp8_weights_and_input_scales_match_llm_compressor() {
    let bad = differing(|n| !is_kv_scale(n));
    assert!(
        bad.is_empty(),
        "tensors that differ from llm-compressor's: {bad:?}"
    );
}

#[test]
#[ignore = "k_scale/v_scale do not match llm-compressor's yet (docs/calibration.md, open questions)"]
fn kv_cache_scales_match_llm_compressor() {
    let bad = differing(is_kv_scale);
    assert!(
        bad.is_empty(),
        "tensors that differ from llm-compressor's: {bad:?}"
    );
}

/// transformers' hidden states, dumped by `scripts/hf_layer_dump.py` (needs the reference
/// Python environment, so it is not part of the default run).
#[test]
#[ignore = "needs QFORGE_HF_DUMP from scripts/hf_layer_dump.py (transformers)"]
fn forward_matches_transformers_layer_by_layer() {
    let dump = std::env::var("QFORGE_HF_DUMP").expect("set QFORGE_HF_DUMP");
    let bytes = std::fs::read(Path::new(&dump)).unwrap();
    let theirs: Vec<f32> = bytes
        .chunks(2)
        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
        .collect();
    let model = fixture("schemes/g128-bf16");
    let ck = Checkpoint::open(&model).unwrap();
    let config = ModelConfig::load(&model).unwrap();
    let ids = g128_ids();
    let pipe = Pipeline::new(&ck, &config, 64);
    let mut acts = pipe.embed(&ids).unwrap();
    let per_layer = acts.iter().map(|a| a.len()).sum::<usize>();
    let report = |layer: usize, acts: &qforge::calibrate::Activations| {
        let ours: Vec<f32> = acts.iter().flatten().copied().collect();
        let base = layer * per_layer;
        let (mut max, mut differ) = (0f32, 0usize);
        for (&a, &b) in ours.iter().zip(&theirs[base..base + per_layer]) {
            if a != b {
                differ += 1;
                if a.is_finite() && b.is_finite() {
                    max = max.max((a - b).abs());
                }
            }
        }
        println!("after layer {layer}: {differ} of {per_layer} values differ, max |diff| {max:e}");
        max
    };
    assert_eq!(report(0, &acts), 0.0);
    for layer in 0..pipe.num_layers() {
        let mut cal = qforge::calibrate::pipeline::Passthrough;
        pipe.run_layer(layer, &mut acts, &mut cal).unwrap();
        let max = report(layer + 1, &acts);
        if layer == 0 {
            // Layer 0's outputs are below 0.32: one BF16 step there is at most 2^-9.
            assert!(max <= 2f32.powi(-9), "layer 0 is {max} from transformers");
        }
    }
}
