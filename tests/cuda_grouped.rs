//! The weight-only grouped presets (W4A16, W4A16_ASYM, W8A16, NVFP4A16, MXFP4A16) run
//! packed on the GPU:
//! - on llm-compressor's own outputs (../shared/fixtures/schemes), in_features multiples of
//!   128 or not (160 and 288 columns: padded superblocks), the dequantization kernel gives
//!   the CPU loader's BF16 values and the packed GEMV `gemv_bf16`'s outputs on them, bit for
//!   bit, and the weights take the packed size, not 2 bytes per weight;
//! - on random models, the packed model's logits equal those of the same model uploaded as
//!   those BF16 values, bit for bit: prefill (dequantized GEMM), short prompts and decode
//!   (the packed GEMV);
//! - INT4 weights with BF16 scales (W4A16, W4A16_ASYM) run the BF16x2 kernels, and the
//!   fixtures' also the general INT4 ones: both exact.
//!
//! On the emulator and on a real GPU when present.
#![cfg(feature = "cuda")]

mod common;
mod cuda_util;

use cuda_util::{devices, same_device};
use qforge::checkpoint::Checkpoint;
use qforge::commands::gpu::report::Report;
use qforge::commands::gpu::selftest::packed;
use qforge::runtime::config::ModelConfig;
use qforge::runtime::cuda::device_weights::{DWeight, DWeights};
use qforge::runtime::cuda::grouped::GroupKind;
use qforge::runtime::cuda::model::load_cuda_on;
use qforge::runtime::cuda::{CudaModel, CudaOptions};
use qforge::runtime::weights::Weights;
use qforge::runtime::Backend;
use qforge::synthetic::LlamaShape;
use std::path::PathBuf;

const FIXTURES: &[&str] = packed::SCHEMES;

fn fixture(name: &str) -> PathBuf {
    common::shared().join("fixtures/schemes").join(name)
}

fn load_host(dir: &std::path::Path) -> (ModelConfig, Weights) {
    let ck = Checkpoint::open(dir).unwrap();
    let cfg = ModelConfig::from_json(&ck.config).unwrap();
    let w = Weights::load(&ck, &cfg).unwrap();
    (cfg, w)
}

/// Every Linear of every fixture: the dequantization kernel gives the CPU loader's BF16
/// values, and the packed GEMV `gemv_bf16`'s outputs on them (1, 5, 16, 20 rows; bias; f32
/// out), bit for bit (the checks of `gpu selftest`); and the weights take the packed size.
#[test]
fn packed_weights_dequantize_and_multiply_as_the_cpus_bf16_bit_for_bit() {
    for name in FIXTURES {
        let dir = fixture(name);
        for (label, g) in devices() {
            let mut r = Report::default();
            packed::fixture(&g, &dir, name, &mut r).unwrap();
            assert_eq!(r.rows.len(), 2, "{label} {name}");
            for row in &r.rows {
                assert_eq!(
                    row.pass,
                    Some(true),
                    "{label} {name}: {} = {}",
                    row.check,
                    row.value
                );
            }
            let ck = Checkpoint::open(&dir).unwrap();
            let cfg = ModelConfig::from_json(&ck.config).unwrap();
            let dw = DWeights::from_checkpoint(&g, &ck, &cfg, &mut |_, _| {}).unwrap();
            for l in &dw.layers {
                for d in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                    // FP4 keeps one scale byte per group (and its tables).
                    if let DWeight::Grouped {
                        kind: GroupKind::Fp4,
                        scales,
                        group,
                        ..
                    } = &d.w
                    {
                        let groups = d.k.next_multiple_of(128).div_ceil(*group);
                        assert_eq!(scales.bytes, d.n * groups, "{label} {name} {}", d.name);
                    }
                    // Packed: 4 or 8 bits per weight plus 4-byte group scales.
                    let dense = 2 * d.n * d.k;
                    assert!(
                        (d.weight_bytes() as usize) < dense * 2 / 3,
                        "{label} {name} {}: {} bytes",
                        d.name,
                        d.weight_bytes()
                    );
                }
            }
        }
    }
}

/// Logits as bits, to compare exactly (NaN included).
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Random models, so that every weight shows in the logits (the fixtures' edge rows dominate
/// theirs, and their NVFP4 weights make every logit NaN): every preset at 256/384 columns,
/// and the FP4 ones at 160/288 (padded superblocks).
fn models(tmp: &std::path::Path) -> Vec<(String, PathBuf)> {
    let shape = |hidden, intermediate, heads| LlamaShape {
        hidden,
        intermediate,
        layers: 2,
        heads,
        kv_heads: 1,
        vocab: 512,
        tied: false,
        rope_factor: 32.0,
    };
    let (aligned, unaligned) = (shape(256, 384, 4), shape(160, 288, 5));
    let mut v = Vec::new();
    for preset in ["w4a16", "w4a16_asym", "w8a16", "nvfp4a16", "mxfp4a16"] {
        v.push((
            preset.to_string(),
            common::quantize_random(tmp, &aligned, preset),
        ));
    }
    for preset in ["nvfp4a16", "mxfp4a16"] {
        let name = format!("{preset}-unaligned");
        v.push((name, common::quantize_random(tmp, &unaligned, preset)));
    }
    v.push((
        "nvfp4a16-own-global-scales".into(),
        own_global_scales(&v[3].1, &tmp.join("nvfp4a16-own")),
    ));
    v
}

/// A copy of NVFP4 model `src` whose k_proj and up_proj global scales are halved: fused
/// parts with global scales of their own (llm-compressor shares one per fused set; other
/// tools need not), so that each part needs its own scale table on the GPU.
fn own_global_scales(src: &std::path::Path, dst: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let path = dst.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut changed = 0;
    for (name, t) in header.as_object().unwrap() {
        if !(name.ends_with("k_proj.weight_global_scale")
            || name.ends_with("up_proj.weight_global_scale"))
        {
            continue;
        }
        assert_eq!(t["dtype"], "F32", "{name}");
        let at = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
        let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&(v * 0.5).to_le_bytes());
        changed += 1;
    }
    assert!(changed >= 4, "{changed} global scales");
    std::fs::write(&path, bytes).unwrap();
    dst.to_path_buf()
}

#[test]
fn packed_models_give_the_logits_of_their_bf16_dequantization_bit_for_bit() {
    let opts = CudaOptions {
        max_seq: Some(64),
        ..CudaOptions::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    for (name, dir) in models(tmp.path()) {
        let (cfg, host) = load_host(&dir);
        let prompt: Vec<u32> = (0..24)
            .map(|i| (i * 37 + 5) % cfg.vocab_size as u32)
            .collect();
        for (label, g) in devices() {
            let mut packed = load_cuda_on(g, &dir, &opts).unwrap();
            let DWeight::Grouped { kind, .. } = packed.weights.layers[0].qkv.w else {
                panic!("{name}: not packed");
            };
            // llm-compressor writes W4A16 scales as BF16: the BF16x2 INT4 kernels run.
            if name.starts_with("w4a16") {
                assert_eq!(kind, GroupKind::Int4Bf16, "{name}");
            }
            let mut dense =
                CudaModel::from_host_on(same_device(label), cfg.clone(), &host, &opts).unwrap();
            // 24 rows: the dequantized GEMM; then decode steps and a 5-row chunk: the GEMV.
            let mut pos = 0;
            for chunk in [&prompt[..], &[7], &[300], &prompt[..5], &[11]] {
                let a = packed.forward(chunk, pos, true).unwrap();
                let b = dense.forward(chunk, pos, true).unwrap();
                assert!(
                    a.iter().all(|x| x.is_finite()),
                    "{label} {name}: not finite"
                );
                assert_eq!(bits(&a), bits(&b), "{label} {name}: logits at {pos} differ");
                pos += chunk.len();
            }
        }
    }
}
