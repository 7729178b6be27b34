//! SmolLM2-135M end to end (fixtures/README.md §6): BF16 residuals and logits vs the
//! `bf16-f32compute` golden, W8A8 residuals, last-position argmax and EOS-suppressed greedy ids
//! vs `w8a8-f32compute`, and KV-cache decoding equal to full recompute. Needs
//! `QFORGE_SMOLLM2` (the BF16 directory built by shared/scripts/make_smollm2.sh); the FP8
//! checkpoint comes from `QFORGE_SMOLLM2_FP8` or is quantized here.

use crate::support::*;
use qforge::runtime::cpu::{load_cpu, CpuModel};
use qforge::runtime::Backend;

const EOS: usize = 2;

/// Greedy ids with EOS suppressed: prefill the prompt, then one token per step (KV cache).
fn greedy_cached(m: &mut CpuModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    m.reset();
    let mut logits = m.forward_logits(prompt, 0, false).unwrap().to_vec();
    let mut out = Vec::new();
    for step in 0..steps {
        logits[EOS] = f32::NEG_INFINITY;
        let id = argmax(&logits) as u32;
        out.push(id);
        if step + 1 < steps {
            let pos = prompt.len() + step;
            logits.copy_from_slice(m.forward_logits(&[id], pos, false).unwrap());
        }
    }
    out
}

/// Full recompute: one forward over the prompt plus the generated ids, logits at every
/// position. Row `prompt.len() - 1 + s` is what a from-scratch forward of the sequence up to
/// step `s` sees (the model is causal and each row's arithmetic does not depend on how many
/// rows run together), so its EOS-suppressed argmax must be `ids[s]`.
fn greedy_recompute_agrees(m: &mut CpuModel, prompt: &[u32], ids: &[u32]) {
    let seq: Vec<u32> = prompt
        .iter()
        .chain(&ids[..ids.len() - 1])
        .copied()
        .collect();
    m.reset();
    let logits = m.forward(&seq, 0, true).unwrap();
    let v = m.vocab_size();
    for (s, &id) in ids.iter().enumerate() {
        let row = prompt.len() - 1 + s;
        let mut l = logits[row * v..(row + 1) * v].to_vec();
        l[EOS] = f32::NEG_INFINITY;
        assert_eq!(
            argmax(&l) as u32,
            id,
            "step {s}: KV-cache decoding differs from recompute"
        );
    }
}

fn golden_json(file: &str) -> serde_json::Value {
    let path = fixture("golden").join(file);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

const RESIDUALS: [&str; 4] = [
    "residual_after_attn.0",
    "residual_after_mlp.0",
    "residual_after_attn.1",
    "residual_after_mlp.1",
];

#[requires(smollm2)]
#[test]
fn smollm2_bf16_matches_transformers() {
    let dir = smollm2();
    let g = golden("smollm2.bf16-f32compute.safetensors");
    let meta = golden_json("smollm2.bf16-f32compute.json");
    let prompt = input_ids(&g);
    let mut m = load_cpu(&dir).unwrap();
    let (logits, trace) = m.forward_trace(&prompt, 0, true).unwrap();
    for key in RESIDUALS {
        let d = max_abs_diff(key, &trace[key], &g[key].f32);
        eprintln!("smollm2 bf16: {key} max |diff| {d:e}");
        assert!(d <= 1e-3, "{key}: {d:e}");
    }
    let v = m.config.vocab_size;
    let last = &logits[36 * v..];
    let d = max_abs_diff("last_logits", last, &g["last_logits"].f32);
    eprintln!("smollm2 bf16: last_logits max |diff| {d:e}");
    assert!(d <= 1e-3, "last_logits: {d:e}");
    let want = ids(&meta["per_position_argmax"]);
    let got: Vec<u32> = logits.chunks_exact(v).map(|r| argmax(r) as u32).collect();
    assert_eq!(got, want, "per-position argmax");

    let greedy = greedy_cached(&mut m, &prompt, 32);
    let want: Vec<u32> = g["greedy_ids_eos_suppressed"]
        .i64
        .iter()
        .map(|&x| x as u32)
        .collect();
    eprintln!("smollm2 bf16 greedy: {greedy:?}");
    assert_eq!(greedy, want, "BF16 greedy ids (EOS suppressed)");
    greedy_recompute_agrees(&mut m, &prompt, &greedy);
}

#[requires(smollm2)]
#[test]
fn smollm2_w8a8_matches_reference() {
    let dir = smollm2();
    let tmp = tempfile::tempdir().unwrap();
    let fp8 = smollm2_fp8(&dir, tmp.path());
    let g = golden("smollm2.w8a8-f32compute.safetensors");
    let prompt = input_ids(&g);
    let mut m = load_cpu(&fp8).unwrap();
    assert!(m
        .weights
        .layers
        .iter()
        .all(|l| l.linears().iter().all(|x| x.is_fp8())));
    let (logits, trace) = m.forward_trace(&prompt, 0, false).unwrap();
    for key in RESIDUALS {
        let d = max_abs_diff(key, &trace[key], &g[key].f32);
        eprintln!("smollm2 w8a8: {key} max |diff| {d:e}");
        assert!(d <= 1e-2, "{key}: {d:e}");
    }
    let d = max_abs_diff("last_logits", &logits, &g["last_logits"].f32);
    eprintln!("smollm2 w8a8: last_logits max |diff| {d:e}");
    assert!(d <= 5.0, "last_logits: {d:e}");
    assert_eq!(argmax(&logits), 504);

    let cached = greedy_cached(&mut m, &prompt, 32);
    let want: Vec<u32> = g["greedy_ids_eos_suppressed"]
        .i64
        .iter()
        .map(|&x| x as u32)
        .collect();
    let agree = cached.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!("smollm2 w8a8 greedy: {cached:?} (first {agree} of 32 agree)");
    assert!(agree >= 27, "only the first {agree} greedy ids agree");
    greedy_recompute_agrees(&mut m, &prompt, &cached);
}
