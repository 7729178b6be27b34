//! Numerics of the presets beyond the BF16 goldens: an F16 checkpoint (a scheme fixture
//! converted here) follows the formulas of fixtures/schemes/README.md with F16 in place of
//! BF16, checked against a reference written here; NaN in a weight is refused by every
//! preset; `--fp8-rounding direct` (the triton path) keeps every scale and changes exactly
//! the codes README §6 counts for "no bf16 rounding of W/s".

mod common;

use half::f16;
use qforge::checkpoint::writer::{self, OutTensor, ShardWriter};
use qforge::checkpoint::{Checkpoint, DType};
use qforge::numerics::{e4m3_to_f32, f32_to_e4m3, Fp8Rounding};
use qforge::quantize::{quantize, QuantizeJob};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn g128() -> PathBuf {
    common::shared().join("fixtures/schemes/g128-bf16")
}

type Tensors = BTreeMap<String, (DType, Vec<usize>, Vec<u8>)>;

fn tensors(dir: &Path) -> Tensors {
    let ck = Checkpoint::open(dir).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (t.dtype, t.shape.clone(), ck.data(t).to_vec()),
            )
        })
        .collect()
}

/// Copies g128-bf16 into `dst`, passing every tensor through `edit` and the config through
/// `config_edit`.
fn derived_model(dst: &Path, edit: impl Fn(&str, &mut OutTensor, &mut Vec<u8>), dtype: &str) {
    std::fs::create_dir_all(dst).unwrap();
    let config = std::fs::read_to_string(g128().join("config.json")).unwrap();
    let config = config.replace(
        "\"dtype\": \"bfloat16\"",
        &format!("\"dtype\": \"{dtype}\""),
    );
    std::fs::write(dst.join("config.json"), config).unwrap();
    let (outs, datas): (Vec<OutTensor>, Vec<Vec<u8>>) = tensors(&g128())
        .into_iter()
        .map(|(name, (dtype, shape, mut data))| {
            let mut t = OutTensor::new(name.clone(), dtype, shape);
            edit(&name, &mut t, &mut data);
            (t, data)
        })
        .unzip();
    let shard = writer::plan_shards(&outs, u64::MAX).remove(0);
    let w = ShardWriter::create(&dst.join("model.safetensors"), &shard).unwrap();
    for (t, d) in outs.iter().zip(&datas) {
        w.write_tensor(&t.name, d).unwrap();
    }
    w.finish().unwrap();
}

fn bf16_values(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}

fn f16_values(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}

/// g128-bf16 with every BF16 tensor converted to F16 (clamped to the F16 range: edge row
/// B8 holds values up to 3.4e38).
fn f16_model(dst: &Path) {
    derived_model(
        dst,
        |_, t, data| {
            let vals = bf16_values(data);
            *data = vals
                .iter()
                .flat_map(|&x| {
                    f16::from_f32(x.clamp(-65504.0, 65504.0))
                        .to_bits()
                        .to_le_bytes()
                })
                .collect();
            t.dtype = DType::F16;
        },
        "float16",
    );
}

// ---- the reference, in F16 ---------------------------------------------------------------

fn h(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

const F16_EPS: f32 = 1.0 / 1024.0;

fn absmax(w: &[f32]) -> f32 {
    w.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

fn f16_bytes(xs: impl Iterator<Item = f32>) -> Vec<u8> {
    xs.flat_map(|x| f16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

/// W8A8: per-row scale h(absmax / 127.5), codes rint(clamp(h(w / s))).
fn ref_w8a8(w: &[f32], cols: usize) -> (Vec<u8>, Vec<u8>) {
    let mut q = Vec::new();
    let mut s = Vec::new();
    for row in w.chunks(cols) {
        let mut sc = h(absmax(row) / 127.5);
        if sc == 0.0 {
            sc = F16_EPS;
        }
        s.push(sc);
        q.extend(
            row.iter()
                .map(|&x| h(x / sc).clamp(-128.0, 127.0).round_ties_even() as i8 as u8),
        );
    }
    (q, f16_bytes(s.into_iter()))
}

/// W4A16_ASYM: (packed codes, scales, packed zero points) per §5.6 with F16 roundings.
fn ref_w4_asym(w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let groups = cols / 128;
    let (mut q, mut scales, mut zps) = (Vec::new(), Vec::new(), vec![0i32; rows * groups]);
    for (r, row) in w.chunks(cols).enumerate() {
        for (g, grp) in row.chunks(128).enumerate() {
            let mn = grp.iter().fold(0.0f32, |m, &x| m.min(x));
            let mx = grp.iter().fold(0.0f32, |m, &x| m.max(x));
            let mut s = h(h(mx - mn) / 15.0);
            let zf = h(-8.0 - h(mn / s));
            let zp = if zf.is_nan() {
                0.0
            } else {
                zf.clamp(-8.0, 7.0).round_ties_even()
            };
            if s == 0.0 {
                s = F16_EPS;
            }
            scales.push(s);
            zps[r * groups + g] = zp as i32;
            q.extend(
                grp.iter()
                    .map(|&x| h(h(x / s) + zp).clamp(-8.0, 7.0).round_ties_even() as i32),
            );
        }
    }
    let bytes =
        |words: Vec<u32>| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
    let word = |vals: &mut dyn Iterator<Item = i32>| {
        vals.enumerate()
            .fold(0u32, |w, (i, v)| w | (((v + 8) as u32) << (4 * i)))
    };
    let words: Vec<u32> = q.chunks(8).map(|c| word(&mut c.iter().copied())).collect();
    let mut zp_words = Vec::new();
    for k in 0..rows / 8 {
        for g in 0..groups {
            zp_words.push(word(&mut (0..8).map(|i| zps[(8 * k + i) * groups + g])));
        }
    }
    (bytes(words), f16_bytes(scales.into_iter()), bytes(zp_words))
}

/// E2M1 nibble by nearest-value comparison, ties to the even index, sign of negatives kept.
fn ref_fp4(x: f32) -> u8 {
    const V: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let a = x.abs().min(6.0);
    let mut best = 0;
    for (i, v) in V.iter().enumerate().skip(1) {
        let (d, db) = ((v - a).abs(), (V[best] - a).abs());
        if d < db || (d == db && i % 2 == 0) {
            best = i;
        }
    }
    best as u8 | if x < 0.0 { 8 } else { 0 }
}

fn pack_fp4(nibbles: &[u8]) -> Vec<u8> {
    nibbles.chunks(2).map(|p| p[0] | (p[1] << 4)).collect()
}

/// NVFP4 with global scale `gs`: (packed, E4M3 scale codes).
fn ref_nvfp4(w: &[f32], gs: f32) -> (Vec<u8>, Vec<u8>) {
    let (mut nib, mut codes) = (Vec::new(), Vec::new());
    for grp in w.chunks(16) {
        let local = h(absmax(grp) / 6.0);
        let mut code = f32_to_e4m3((gs * local).clamp(-448.0, 448.0));
        if code == 0 {
            code = 0x20;
        }
        codes.push(code);
        let eff = e4m3_to_f32(code) / gs;
        nib.extend(grp.iter().map(|&x| ref_fp4(x / eff + 0.0)));
    }
    (pack_fp4(&nib), codes)
}

fn ref_global_scale(a: f32) -> f32 {
    let gs = h(h(1.0 / h(a.max(f32::MIN_POSITIVE))) * 2688.0);
    if gs.is_finite() {
        gs
    } else {
        1.0
    }
}

/// MXFP4 in F16: (packed, E8M0 bytes).
fn ref_mxfp4(w: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let (mut nib, mut bytes) = (Vec::new(), Vec::new());
    for grp in w.chunks(32) {
        let bits = f16::from_f32(absmax(grp)).to_bits() as u32;
        let p = f16::from_bits(((bits + 0x100) & 0xFC00) as u16).to_f32();
        let e = 127.0 + p.log2().floor() - 2.0; // -inf for p = 0, inf for p = inf
        let u = e.clamp(0.0, 255.0) as i32;
        let mut s = h(2f64.powi(u - 127) as f32);
        if s == 0.0 {
            s = 1.0;
        }
        bytes.push(if s.is_infinite() {
            127
        } else {
            (127 + s.log2().floor() as i32) as u8
        });
        nib.extend(grp.iter().map(|&x| ref_fp4(h(x / s) + 0.0)));
    }
    (pack_fp4(&nib), bytes)
}

#[test]
fn f16_checkpoint_follows_the_formulas_with_f16_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("g128-f16");
    f16_model(&model);
    let src = tensors(&model);
    let weight = |name: &str| f16_values(&src[name].2);
    let linears: Vec<String> = src
        .keys()
        .filter(|n| n.contains("_proj."))
        .map(|n| n.trim_end_matches(".weight").to_string())
        .collect();
    assert_eq!(linears.len(), 14);
    for (preset, file) in common::PRESET_RECIPES {
        let out = tmp.path().join(preset);
        quantize(&QuantizeJob::new(&model, common::recipe(file), &out))
            .unwrap_or_else(|e| panic!("{preset}: {e}"));
        let got = tensors(&out);
        for m in &linears {
            let (rows, cols) = (
                src[&format!("{m}.weight")].1[0],
                src[&format!("{m}.weight")].1[1],
            );
            let w = weight(&format!("{m}.weight"));
            let t = |suffix: &str| &got[&format!("{m}.{suffix}")];
            match *preset {
                "W8A8" => {
                    let (q, s) = ref_w8a8(&w, cols);
                    assert_eq!(
                        (&t("weight").2, &t("weight_scale").2),
                        (&q, &s),
                        "{preset} {m}"
                    );
                }
                "W4A16_ASYM" => {
                    let (q, s, z) = ref_w4_asym(&w, rows, cols);
                    assert_eq!(t("weight_packed").2, q, "{preset} {m} codes");
                    assert_eq!(t("weight_scale").2, s, "{preset} {m} scales");
                    assert_eq!(t("weight_zero_point").2, z, "{preset} {m} zero points");
                }
                "NVFP4A16" => {
                    let gs =
                        f32::from_le_bytes(t("weight_global_scale").2[..4].try_into().unwrap());
                    let (q, s) = ref_nvfp4(&w, gs);
                    assert_eq!(
                        (&t("weight_packed").2, &t("weight_scale").2),
                        (&q, &s),
                        "{preset} {m}"
                    );
                }
                "MXFP4A16" => {
                    let (q, s) = ref_mxfp4(&w);
                    assert_eq!(
                        (&t("weight_packed").2, &t("weight_scale").2),
                        (&q, &s),
                        "{preset} {m}"
                    );
                }
                _ => {}
            }
            if !preset.contains("FP4") {
                assert_eq!(t("weight_scale").0, DType::F16, "{preset} {m}");
            }
        }
        if *preset == "NVFP4A16" {
            check_f16_global_scales(&src, &got);
        }
    }
}

/// q/k/v and gate/up share the global scale of their combined absmax; computed in F16 it
/// differs from the BF16 golden's.
fn check_f16_global_scales(src: &Tensors, got: &Tensors) {
    let gs = |m: &str| {
        f32::from_le_bytes(
            got[&format!("{m}.weight_global_scale")].2[..4]
                .try_into()
                .unwrap(),
        )
    };
    let sets: [(&str, &[&str]); 4] = [
        ("self_attn", &["q_proj", "k_proj", "v_proj"]),
        ("self_attn", &["o_proj"]),
        ("mlp", &["gate_proj", "up_proj"]),
        ("mlp", &["down_proj"]),
    ];
    for layer in 0..2 {
        for (part, set) in sets {
            let names: Vec<String> = set
                .iter()
                .map(|p| format!("model.layers.{layer}.{part}.{p}"))
                .collect();
            let a = names
                .iter()
                .map(|m| absmax(&f16_values(&src[&format!("{m}.weight")].2)))
                .fold(0.0f32, f32::max);
            for m in &names {
                assert_eq!(gs(m), ref_global_scale(a), "{m}");
            }
        }
    }
    // L0 q/k/v: A = 0.5 (edge row B4) gives 5376 in F16 too; L1 gate/up (clamped to 65504)
    // takes the F16 subnormal reciprocal path.
    assert_eq!(gs("model.layers.0.self_attn.k_proj"), 5376.0);
    assert_eq!(gs("model.layers.1.mlp.up_proj"), ref_global_scale(65504.0));
}

#[test]
fn nan_in_a_weight_is_refused_by_every_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("nan");
    let target = "model.layers.1.mlp.down_proj.weight";
    derived_model(
        &model,
        |name, t, data| {
            if name == target {
                let at = 2 * (17 * t.shape[1] + 5);
                data[at..at + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
            }
        },
        "bfloat16",
    );
    for (preset, file) in common::PRESET_RECIPES {
        let out = tmp.path().join(preset);
        let err = quantize(&QuantizeJob::new(&model, common::recipe(file), &out))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(target) && err.contains("row 17") && err.contains("NaN"),
            "{preset}: {err}"
        );
        assert!(!out.exists(), "{preset}");
    }
}

/// Bytes that differ between two outputs, per tensor suffix; scales must be equal.
fn code_differences(a: &Tensors, b: &Tensors, code_suffix: &str) -> usize {
    let mut differ = 0;
    for (name, (_, _, bytes)) in a {
        let other = &b[name].2;
        if name.ends_with(code_suffix) {
            differ += bytes.iter().zip(other).filter(|(x, y)| x != y).count();
        } else {
            assert_eq!(bytes, other, "{name} must not depend on the rounding");
        }
    }
    differ
}

#[test]
fn direct_rounding_changes_only_the_codes_readme_counts() {
    let schemes = common::shared().join("fixtures/schemes");
    let tmp = tempfile::tempdir().unwrap();
    // README §6, "no bf16 rounding of W/s", g128; NVFP4 already divides in f32 and MXFP4
    // by powers of two, so neither changes on these weights.
    let cases = [
        ("FP8_DYNAMIC", ".weight", 13_424),
        ("FP8_BLOCK", ".weight", 13_390),
        ("W8A8", ".weight", 44_375),
        ("W8A16", ".weight_packed", 46_349),
        ("W4A16", ".weight_packed", 2_891),
        ("NVFP4A16", ".weight_packed", 0),
        ("MXFP4A16", ".weight_packed", 0),
    ];
    for (preset, suffix, want) in cases {
        let file = common::PRESET_RECIPES
            .iter()
            .find(|(p, _)| *p == preset)
            .unwrap()
            .1;
        let out = tmp.path().join(preset);
        let mut job = QuantizeJob::new(g128(), common::recipe(file), &out);
        job.rounding = Fp8Rounding::Direct;
        quantize(&job).unwrap();
        let eager = tensors(&schemes.join(format!("g128-{preset}")));
        let differ = code_differences(&eager, &tensors(&out), suffix);
        assert_eq!(differ, want, "{preset}");
    }
}
