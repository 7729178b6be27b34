//! The CPU forward pass against the tiny-model goldens (fixtures/README.md §6): residual
//! streams up to `residual_after_attn.1` (past it the models overflow by design), for the BF16
//! checkpoints vs `bf16-f32compute` and the FP8 ones vs `w8a8-f32compute`, on both config
//! styles (tiny-llama3: classic `rope_theta` + llama3 `rope_scaling`, untied; tiny-tied:
//! transformers-5 `rope_parameters`, tied embeddings).

use crate::support::{fixture, golden, input_ids, max_abs_diff};
use qforge::runtime::cpu::load_cpu;
use qforge::runtime::Backend;

const CHECKED: [&str; 3] = [
    "residual_after_attn.0",
    "residual_after_mlp.0",
    "residual_after_attn.1",
];

/// Runs `checkpoint` on the golden prompt and compares the residual streams with `golden_file`
/// within `tol` (max abs); returns the worst difference.
fn check_residuals(checkpoint: &str, golden_file: &str, tol: f32) -> f32 {
    let g = golden(golden_file);
    let ids = input_ids(&g);
    assert_eq!(ids.len(), 37);
    let mut m = load_cpu(&fixture(checkpoint)).unwrap();
    let (_, trace) = m.forward_trace(&ids, 0, false).unwrap();
    let mut worst = 0.0f32;
    for key in CHECKED {
        let want = &g[key];
        assert_eq!(
            want.shape,
            [37, m.config.hidden_size],
            "{golden_file}: {key}"
        );
        let d = max_abs_diff(key, &trace[key], &want.f32);
        eprintln!("{checkpoint} vs {golden_file}: {key} max |diff| {d:e}");
        assert!(d <= tol, "{checkpoint}: {key} differs by {d:e} > {tol:e}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn tiny_llama3_bf16_residuals() {
    check_residuals(
        "tiny-llama3-bf16",
        "tiny-llama3.bf16-f32compute.safetensors",
        1e-6,
    );
}

#[test]
fn tiny_tied_bf16_residuals() {
    check_residuals(
        "tiny-tied-bf16",
        "tiny-tied.bf16-f32compute.safetensors",
        1e-6,
    );
}

#[test]
fn tiny_llama3_w8a8_residuals() {
    check_residuals(
        "tiny-llama3-fp8-dynamic",
        "tiny-llama3.w8a8-f32compute.safetensors",
        1e-6,
    );
}

#[test]
fn tiny_tied_w8a8_residuals() {
    check_residuals(
        "tiny-tied-fp8-dynamic",
        "tiny-tied.w8a8-f32compute.safetensors",
        1e-6,
    );
}

/// The W8A8 forward must not be the BF16 one: it sits ≥ 2e-3 away from the BF16 golden
/// (fixtures/README.md §6.4), so a runtime silently dequantizing would fail here.
#[test]
fn tiny_w8a8_differs_from_bf16() {
    let g = golden("tiny-llama3.bf16-f32compute.safetensors");
    let mut m = load_cpu(&fixture("tiny-llama3-fp8-dynamic")).unwrap();
    let (_, trace) = m.forward_trace(&input_ids(&g), 0, false).unwrap();
    let d = max_abs_diff(
        "attn.1",
        &trace["residual_after_attn.1"],
        &g["residual_after_attn.1"].f32,
    );
    assert!(d > 1e-3, "W8A8 residual is only {d:e} from the BF16 golden");
}

/// The KV cache: a prompt fed in chunks and then one token at a time gives the same residual
/// streams, bit for bit, as one prefill (both weight kinds; the per-row arithmetic does not
/// depend on how many rows run together).
#[test]
fn kv_cache_chunks_equal_full_prefill() {
    for checkpoint in ["tiny-tied-bf16", "tiny-llama3-fp8-dynamic"] {
        let ids = input_ids(&golden("tiny-tied.bf16-f32compute.safetensors"));
        let mut m = load_cpu(&fixture(checkpoint)).unwrap();
        let (_, full) = m.forward_trace(&ids, 0, false).unwrap();
        m.reset();
        let mut pieces: Vec<f32> = Vec::new();
        let mut pos = 0;
        for chunk in [&ids[..20], &ids[20..30]]
            .into_iter()
            .chain(ids[30..].chunks(1))
        {
            let (_, tr) = m.forward_trace(chunk, pos, false).unwrap();
            pieces.extend(&tr["residual_after_attn.1"]);
            pos += chunk.len();
        }
        assert_eq!(m.cached_len(), 37);
        let same = pieces
            .iter()
            .zip(&full["residual_after_attn.1"])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{checkpoint}: chunked residuals differ from the full prefill"
        );
    }
}

#[test]
fn forward_argument_errors() {
    use qforge::runtime::cpu::{load_cpu_with, CpuOptions};
    let opts = CpuOptions { max_seq: Some(8) };
    let mut m = load_cpu_with(&fixture("tiny-tied-bf16"), &opts).unwrap();
    assert_eq!(m.max_seq(), 8);
    let err = |r: qforge::Result<Vec<f32>>| r.unwrap_err().to_string();
    assert!(err(m.forward(&[], 0, false)).contains("no tokens"));
    assert!(err(m.forward(&[1, 2], 3, false)).contains("holds only 0"));
    assert!(err(m.forward(&[49152], 0, false)).contains("outside the vocabulary"));
    assert!(err(m.forward(&[1; 9], 0, false)).contains("exceed the KV cache length 8"));
    let logits = m.forward(&[1, 2, 3], 0, true).unwrap();
    assert_eq!(logits.len(), 3 * m.vocab_size());
    assert_eq!(m.forward(&[4], 3, false).unwrap().len(), m.vocab_size());
}
