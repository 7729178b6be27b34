//! config.json parsing on the real fixtures (both styles) and the Llama-family variants the
//! runtime shares one forward pass for (Mistral, Qwen2 q/k/v bias, Qwen3 q/k norm).

use crate::support::{fixture, golden, input_ids, rewrite, Entry};
use qforge::runtime::config::{Arch, ModelConfig, Quantization, RopeScaling};
use qforge::runtime::cpu::load_cpu;
use safetensors::Dtype;

#[test]
fn classic_config_style() {
    let c = ModelConfig::load(&fixture("tiny-llama3-bf16")).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_layers),
        (32, 160, 2)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (4, 2, 16));
    assert_eq!(c.rope.theta, 500000.0);
    assert_eq!(
        c.rope.scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0
        }
    );
    assert!(!c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(c.quantization, Quantization::None);
}

#[test]
fn transformers5_config_style() {
    let c = ModelConfig::load(&fixture("tiny-tied-fp8-dynamic")).unwrap();
    assert_eq!(
        (c.rope.theta, c.rope.scaling.clone()),
        (100000.0, RopeScaling::None)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(
        c.quantization,
        Quantization::Fp8Dynamic {
            ignore: vec!["lm_head".into()]
        }
    );
}

/// Residuals of a rewritten tiny-llama3-bf16 on the golden prompt.
fn residual(edit: impl FnOnce(&mut Vec<Entry>), arch: &str) -> Vec<f32> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    rewrite(&fixture("tiny-llama3-bf16"), &dir, edit, |c| {
        c["architectures"] = serde_json::json!([arch]);
    });
    let ids = input_ids(&golden("tiny-llama3.bf16-f32compute.safetensors"));
    let mut m = load_cpu(&dir).unwrap();
    let (_, trace) = m.forward_trace(&ids, 0, false).unwrap();
    trace["residual_after_attn.1"].clone()
}

fn add_qkv_bias(t: &mut Vec<Entry>, value: f32) {
    for l in 0..2 {
        for (p, n) in [("q_proj", 64), ("k_proj", 32), ("v_proj", 32)] {
            let bits = half::bf16::from_f32(value).to_bits().to_le_bytes();
            t.push(Entry {
                name: format!("model.layers.{l}.self_attn.{p}.bias"),
                dtype: Dtype::BF16,
                shape: vec![n],
                data: bits.repeat(n),
            });
        }
    }
}

/// Mistral and Qwen2 with zero q/k/v biases compute exactly what Llama computes; a non-zero
/// bias is applied; Qwen2 without its biases is refused.
#[test]
fn mistral_and_qwen2_share_the_llama_forward() {
    let llama = residual(|_| {}, "LlamaForCausalLM");
    assert_eq!(residual(|_| {}, "MistralForCausalLM"), llama);
    assert_eq!(
        residual(|t| add_qkv_bias(t, 0.0), "Qwen2ForCausalLM"),
        llama
    );
    assert_ne!(
        residual(|t| add_qkv_bias(t, 0.25), "Qwen2ForCausalLM"),
        llama
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    rewrite(
        &fixture("tiny-llama3-bf16"),
        &dir,
        |_| {},
        |c| {
            c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        },
    );
    let e = load_cpu(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("missing"),
        "{e}"
    );
}

/// Qwen3 needs its per-head q/k norms; with them the forward runs and they take effect.
#[test]
fn qwen3_qk_norm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    rewrite(
        &fixture("tiny-llama3-bf16"),
        &dir,
        |_| {},
        |c| {
            c["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
        },
    );
    let e = load_cpu(&dir).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.self_attn.q_norm.weight"), "{e}");

    let norms = |t: &mut Vec<Entry>| {
        for l in 0..2 {
            for n in ["q_norm", "k_norm"] {
                t.push(Entry {
                    name: format!("model.layers.{l}.self_attn.{n}.weight"),
                    dtype: Dtype::BF16,
                    shape: vec![16],
                    data: half::bf16::from_f32(1.0).to_bits().to_le_bytes().repeat(16),
                });
            }
        }
    };
    let qwen3 = residual(norms, "Qwen3ForCausalLM");
    assert!(qwen3.iter().all(|v| v.is_finite()));
    assert_ne!(qwen3, residual(|_| {}, "LlamaForCausalLM"));
}
