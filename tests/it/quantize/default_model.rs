//! The bundled default model is exactly what `qforge make-model --shape tiny --seed 0` writes,
//! so anyone can regenerate it, and its forward pass is finite (the quick start depends on it).

use crate::support;

#[test]
fn bundled_model_is_reproducible_from_its_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let status = support::qforge()
        .args(["make-model", "--shape", "tiny", "--seed", "0", "--output"])
        .arg(&out)
        .arg("--tokenizer-from")
        .arg(support::shared().join("fixtures/smollm2-meta"))
        .status()
        .unwrap();
    assert!(status.success());
    let bundled = support::bundled_model();
    for f in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
    ] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(bundled.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn bundled_model_has_finite_logits_everywhere() {
    use qforge::runtime::Backend;
    let dir = support::bundled_model();
    let mut model = qforge::runtime::cpu::load_cpu(&dir).unwrap();
    let vocab = model.vocab_size();
    let tokens: Vec<u32> = (0..64u32).map(|i| (i * 7919) % vocab as u32).collect();
    let logits = model.forward(&tokens, 0, true).unwrap();
    assert_eq!(logits.len(), tokens.len() * vocab);
    assert!(logits.iter().all(|x| x.is_finite()));
    // Not degenerate: the logits of different positions differ.
    assert_ne!(logits[..vocab], logits[vocab..2 * vocab]);
}
