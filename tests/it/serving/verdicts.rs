//! Whole-model verdicts: the tensor-parallel split rules, the schemes vLLM picks from a
//! `quantization_config`, FP8_BLOCK on SmolLM2, FP8_DYNAMIC on Llama-70B and its memory.

use crate::support::*;
use qforge::checkpoint::{Checkpoint, DType};
use qforge::recipe::scheme_recipe;
use qforge::serving::scheme::{Fp8Weights, VllmScheme};
use qforge::serving::{self, skeleton, ServingModel, Tensor, TpVerdict};
use qforge::synthetic::{named_shape, LlamaShape};
use serde_json::json;

/// SmolLM2-135M's shape: hidden 576, intermediate 1536, 30 layers, 9 heads / 3 KV heads of 64.
fn smollm2_shape() -> LlamaShape {
    LlamaShape {
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        vocab: 49152,
        tied: true,
        rope_factor: 32.0,
    }
}

/// The plan of quantizing a headers-only model of `shape` with `preset` (lm_head ignored).
fn plan(shape: &LlamaShape, preset: &str) -> ServingModel {
    let dir = tempfile::tempdir().unwrap();
    skeleton::write(shape, dir.path()).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let plan = scheme_recipe(preset, &["lm_head".into()])
        .unwrap()
        .plan()
        .unwrap();
    serving::from_source(&ck, &plan).unwrap()
}

fn verdict(model: &ServingModel, tp: usize) -> TpVerdict {
    serving::check(model, &[tp]).remove(0)
}

fn failed_rule(v: &TpVerdict) -> Option<&'static str> {
    v.failure.as_ref().map(|f| f.violation.rule)
}

#[test]
fn fp8_block_on_smollm2_shape_is_refused_as_vllm_said() {
    let model = plan(&smollm2_shape(), "FP8_BLOCK");
    let v = verdict(&model, 1);
    assert!(!v.loadable);
    let f = v.failure.unwrap();
    assert_eq!(f.layer, "model.layers.0.self_attn.qkv_proj");
    assert_eq!(
        f.violation.message,
        "Weight output_partition_size = 576 is not divisible by weight quantization block_n = 128."
    );
    assert_eq!(f.scheme, Some("CompressedTensorsW8A8Fp8"));
    // Every layer's qkv_proj; gate_up (1536, 1536) and o/down (unsplit inputs) are fine.
    assert_eq!(v.failed_layers, 30);
    // The same shapes with FP8_DYNAMIC load (vLLM 0.32 ran them).
    assert!(verdict(&plan(&smollm2_shape(), "FP8_DYNAMIC"), 1).loadable);
}

#[requires(smollm2)]
#[test]
fn fp8_block_on_the_real_smollm2_is_refused_as_vllm_said() {
    let run = qforge()
        .args([
            "check",
            "--scheme",
            "fp8_block",
            "--tensor-parallel",
            "1",
            "--model",
        ])
        .arg(smollm2())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(
        out.contains("Weight output_partition_size = 576 is not divisible by weight quantization block_n = 128."),
        "{out}"
    );
}

#[test]
fn heads_and_features_must_split() {
    let model = plan(&smollm2_shape(), "FP8_DYNAMIC");
    // 9 heads / 3 KV heads / 1536: TP 3 splits everything, TP 2 not the heads.
    assert!(verdict(&model, 3).loadable);
    let v = verdict(&model, 2);
    assert_eq!(failed_rule(&v), Some("tp.attention_heads"));
    assert!(v
        .failure
        .unwrap()
        .violation
        .message
        .contains("num_attention_heads = 9"));
    // At TP 6, 6 % 3 KV heads == 0 but 9 % 6 != 0.
    assert_eq!(failed_rule(&verdict(&model, 6)), Some("tp.attention_heads"));
    // KV heads neither divisible by nor dividing the ranks; at TP 6 the 3 KV heads are
    // replicated twice.
    let shape = LlamaShape {
        heads: 12,
        kv_heads: 3,
        hidden: 768,
        ..smollm2_shape()
    };
    assert_eq!(
        failed_rule(&verdict(&plan(&shape, "FP8_DYNAMIC"), 4)),
        Some("tp.kv_heads")
    );
    assert!(verdict(&plan(&shape, "FP8_DYNAMIC"), 6).loadable);
    // intermediate 1540 does not split in 4 (heads 8 / kv 4 do).
    let shape = LlamaShape {
        heads: 8,
        kv_heads: 4,
        hidden: 512,
        intermediate: 1540,
        ..smollm2_shape()
    };
    let m = plan(&shape, "FP8_DYNAMIC");
    assert!(verdict(&m, 2).loadable);
    assert_eq!(failed_rule(&verdict(&m, 8)), Some("tp.split"));
}

/// FP8_DYNAMIC weight bytes of `shape` with lm_head in BF16, counted here from the shapes:
/// (whole model, on each of 2 ranks).
fn fp8_dynamic_bytes(s: &LlamaShape) -> (u64, u64) {
    let (h, i, l) = (s.hidden as u64, s.intermediate as u64, s.layers as u64);
    let kv = (s.kv_heads * s.head_dim()) as u64;
    let column_rows = h + 2 * kv + 2 * i; // q, k, v, gate, up
    let row_rows = 2 * h; // o, down: [hidden, *]
    let fp8 = h * column_rows + (h * h + i * h); // 1 byte a weight
    let scales = 2 * (column_rows + row_rows); // BF16, one per output row
    let vocab = 2 * (s.vocab as u64) * h * 2; // embed_tokens + lm_head, BF16
    let norms = 2 * (2 * l + 1) * h;
    let whole = l * (fp8 + scales) + vocab + norms;
    // Split in two: everything but the norms and the row-parallel layers' channel scales.
    let replicated = norms + l * 2 * row_rows;
    (whole, (whole - replicated) / 2 + replicated)
}

#[test]
fn llama_70b_fp8_dynamic_loads_at_every_size_with_the_model_cards_memory() {
    let shape = named_shape("llama-70b").unwrap();
    let model = plan(&shape, "FP8_DYNAMIC");
    let verdicts = serving::check(&model, &[1, 2, 4, 8]);
    assert!(verdicts.iter().all(|v| v.loadable), "{verdicts:?}");
    let (whole, half) = fp8_dynamic_bytes(&shape);
    assert_eq!(verdicts[0].weight_bytes_per_gpu, whole);
    assert_eq!(verdicts[1].weight_bytes_per_gpu, half);
    // The model card serves it on 2×H100 (80 GiB): 36 GB of weights each, half the memory
    // vLLM takes (0.9 × 80 GiB) left for the KV cache; one H100 would have 4.6 GB left.
    let budget = 0.9 * (80u64 << 30) as f64;
    assert!((36.0e9..36.7e9).contains(&(half as f64)), "{half}");
    assert!(budget - half as f64 > 40e9);
    assert!(budget - (whole as f64) < 5e9);
    // At TP 8 each rank holds one of the 8 KV heads.
    assert!(verdicts[3].weight_bytes_per_gpu < whole / 7);
}

#[test]
fn kv_heads_replicated_beyond_their_count() {
    // 8 KV heads at TP 16: each rank holds a whole KV head, so k/v take 1/8, not 1/16.
    let shape = named_shape("llama-70b").unwrap();
    let model = plan(&shape, "FP8_DYNAMIC");
    let (at8, at16) = (verdict(&model, 8), verdict(&model, 16));
    assert!(at16.loadable);
    let kv_bytes = (shape.layers * 2 * 1024 * 8192) as u64; // FP8 k and v, without scales
    let halved = at8.weight_bytes_per_gpu - at16.weight_bytes_per_gpu;
    // Everything split by 16 halves from TP 8, except k/v (kept at 1/8).
    let all_split_halved = at8.weight_bytes_per_gpu / 2;
    assert!(halved < all_split_halved);
    assert!(
        all_split_halved - halved >= kv_bytes / 16,
        "{halved} {all_split_halved}"
    );
}

/// A checkpoint model with a hand-written `quantization_config` (as llm-compressor writes for
/// recipes qforge has no preset for: static FP8, GPTQ with act-order, mixed groups).
fn with_config(quantization_config: serde_json::Value) -> ServingModel {
    let shape = LlamaShape {
        heads: 8,
        kv_heads: 2,
        hidden: 512,
        intermediate: 1024,
        layers: 1,
        ..smollm2_shape()
    };
    let mut config = shape.config();
    config["quantization_config"] = quantization_config;
    let tensors = shape
        .tensors()
        .into_iter()
        .map(|t| Tensor {
            name: t.name,
            dtype: DType::BF16,
            shape: t.shape,
        })
        .collect();
    ServingModel::new(&config, tensors).unwrap()
}

fn group(format: &str, weights: serde_json::Value, inputs: serde_json::Value) -> serde_json::Value {
    json!({"quant_method": "compressed-tensors", "format": format, "ignore": ["lm_head"],
           "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
           "input_activations": inputs}}})
}

#[test]
fn schemes_from_the_quantization_config() {
    let fp8 = |strategy: &str, dynamic: bool| {
        json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": strategy,
               "dynamic": dynamic})
    };
    // Static per-tensor FP8 (llm-compressor's FP8 preset, calibrated input scales).
    let m = with_config(group(
        "float-quantized",
        fp8("tensor", false),
        fp8("tensor", false),
    ));
    assert_eq!(
        m.schemes,
        [VllmScheme::W8A8Fp8 {
            weights: Fp8Weights::Tensor
        }]
    );
    // GPTQ int4 with act-order "weight": the groups stay in column order, no g_idx.
    let w4 = json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
                    "group_size": 128, "actorder": "weight"});
    let m = with_config(group("pack-quantized", w4.clone(), json!(null)));
    assert_eq!(
        m.schemes,
        [VllmScheme::Wna16 {
            bits: 4,
            group: Some(128),
            symmetric: true,
            actorder: false
        }]
    );
    // The same weights stored in a format vLLM has no WNA16 reader for.
    let m = with_config(group("naive-quantized", w4, json!(null)));
    let v = verdict(&m, 1);
    assert_eq!(failed_rule(&v), Some("scheme"));
    assert!(v
        .failure
        .unwrap()
        .violation
        .message
        .starts_with("No compressed-tensors compatible scheme"));
    // int8 weights with static per-tensor int8 inputs (SmoothQuant + static W8A8).
    let int8 = |strategy: &str, dynamic: bool| {
        json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": strategy,
               "dynamic": dynamic})
    };
    let m = with_config(group(
        "int-quantized",
        int8("channel", false),
        int8("tensor", false),
    ));
    assert_eq!(m.schemes, [VllmScheme::W8A8Int8]);
}

#[test]
fn fused_parts_must_share_a_scheme() {
    let fp8 = json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "channel",
                     "dynamic": false});
    let tok = json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "token",
                     "dynamic": true});
    let mut q = group("float-quantized", fp8, tok);
    q["ignore"] = json!(["lm_head", "re:.*k_proj$"]);
    let v = verdict(&with_config(q), 1);
    assert_eq!(failed_rule(&v), Some("scheme"));
    let f = v.failure.unwrap();
    assert_eq!(f.layer, "model.layers.0.self_attn.qkv_proj");
    assert!(
        f.violation
            .message
            .contains("vLLM requires all to use the same scheme"),
        "{f}"
    );
}
