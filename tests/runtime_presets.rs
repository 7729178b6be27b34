//! The CPU runtime on every preset `qforge quantize` writes (fixtures/schemes): the
//! load-time dequantization equals an independent one written here from the fixtures
//! README's "dequant" formulas, bit for bit; it stays within each preset's error of the BF16
//! source; and the logits of each quantized model agree with the BF16 model's.

mod common;

use qforge::checkpoint::Checkpoint;
use qforge::runtime::config::ModelConfig;
use qforge::runtime::cpu::load_cpu;
use qforge::runtime::weights::{Dense, LinearWeight, Weights};
use std::path::PathBuf;

/// Every preset with its minimum top-1 agreement with the BF16 model over 32 positions of
/// each fixture (measured values in the comment of `logits_agree_with_bf16`).
const PRESETS: [(&str, f64); 8] = [
    ("FP8_DYNAMIC", 0.9),
    ("FP8_BLOCK", 0.9),
    ("W8A8", 0.9),
    ("W8A16", 0.9),
    ("W4A16", 0.6),
    ("W4A16_ASYM", 0.6),
    ("NVFP4A16", 0.6),
    ("MXFP4A16", 0.6),
];

fn dir(name: &str) -> PathBuf {
    common::shared().join("fixtures/schemes").join(name)
}

/// The `(fixture, preset)` outputs that exist (the unaligned fixture lacks the group-128 ones).
fn outputs() -> Vec<(&'static str, &'static str, f64)> {
    let mut v = Vec::new();
    for fixture in ["g128", "unaligned"] {
        for (preset, min) in PRESETS {
            if dir(&format!("{fixture}-{preset}")).is_dir() {
                v.push((fixture, preset, min));
            }
        }
    }
    assert_eq!(v.len(), 13, "fixtures/schemes should hold 13 outputs");
    v
}

fn bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Round to BF16, nearest even (finite inputs).
fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// E4M3FN code to value, from the bit layout (no NaN in these files).
fn e4m3(c: u8) -> f32 {
    let sign = if c & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((c >> 3) & 0xF) as i32, (c & 7) as f32);
    let mag = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * mag
}

fn fp4(n: u8) -> f32 {
    let v = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0][(n & 7) as usize];
    if n & 8 != 0 {
        -v
    } else {
        v
    }
}

struct Raw<'a> {
    ck: &'a Checkpoint,
    module: String,
}

impl Raw<'_> {
    fn bytes(&self, suffix: &str) -> &[u8] {
        let t = self.ck.get(&format!("{}.{suffix}", self.module)).unwrap();
        self.ck.data(t)
    }
    fn bf16s(&self, suffix: &str) -> Vec<f32> {
        let b = self.bytes(suffix);
        b.chunks(2)
            .map(|c| bf16(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    }
    fn u32s(&self, suffix: &str) -> Vec<u32> {
        let b = self.bytes(suffix);
        b.chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// README "dequant" of one Linear `[rows, cols]`, rounded to BF16.
fn reference(raw: &Raw, preset: &str, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; rows * cols];
    let at = |i: usize| (i / cols, i % cols);
    match preset {
        "FP8_BLOCK" => {
            let (q, s) = (raw.bytes("weight"), raw.bf16s("weight_scale"));
            let nb = cols.div_ceil(128);
            for (i, v) in w.iter_mut().enumerate() {
                let (r, c) = at(i);
                *v = e4m3(q[i]) * s[r / 128 * nb + c / 128];
            }
        }
        "W8A8" => {
            let (q, s) = (raw.bytes("weight"), raw.bf16s("weight_scale"));
            for (i, v) in w.iter_mut().enumerate() {
                *v = (q[i] as i8) as f32 * s[i / cols];
            }
        }
        "W8A16" | "W4A16" | "W4A16_ASYM" => {
            let bits = if preset == "W8A16" { 8 } else { 4 };
            let per = 32 / bits;
            let (p, s) = (raw.u32s("weight_packed"), raw.bf16s("weight_scale"));
            let g = cols / 128;
            let zps = (preset == "W4A16_ASYM").then(|| raw.u32s("weight_zero_point"));
            let unpack = |word: u32, k: usize| {
                ((word >> (bits * k)) & ((1 << bits) - 1)) as i32 - (1 << (bits - 1))
            };
            for (i, v) in w.iter_mut().enumerate() {
                let (r, c) = at(i);
                let q = unpack(p[r * (cols / per) + c / per], c % per);
                let zp = zps
                    .as_ref()
                    .map_or(0, |z| unpack(z[r / per * g + c / 128], r % per));
                *v = (q - zp) as f32 * s[r * g + c / 128];
            }
        }
        "NVFP4A16" => {
            let (p, s) = (raw.bytes("weight_packed"), raw.bytes("weight_scale"));
            let gs = f32::from_le_bytes(raw.bytes("weight_global_scale").try_into().unwrap());
            for (i, v) in w.iter_mut().enumerate() {
                let (r, c) = at(i);
                let n = (p[r * cols / 2 + c / 2] >> (4 * (c % 2))) & 0xF;
                *v = fp4(n) * (e4m3(s[r * cols / 16 + c / 16]) / gs);
            }
        }
        "MXFP4A16" => {
            let (p, s) = (raw.bytes("weight_packed"), raw.bytes("weight_scale"));
            for (i, v) in w.iter_mut().enumerate() {
                let (r, c) = at(i);
                let n = (p[r * cols / 2 + c / 2] >> (4 * (c % 2))) & 0xF;
                *v = fp4(n) * 2f64.powi(s[r * cols / 32 + c / 32] as i32 - 127) as f32;
            }
        }
        other => panic!("no reference for {other}"),
    }
    w.into_iter().map(round_bf16).collect()
}

fn load(path: &std::path::Path) -> (Checkpoint, Weights) {
    let ck = Checkpoint::open(path).unwrap();
    let cfg = ModelConfig::from_json(&ck.config).unwrap();
    let w = Weights::load(&ck, &cfg).unwrap();
    (ck, w)
}

fn dense_f32(l: &LinearWeight) -> Vec<f32> {
    match l {
        LinearWeight::Dense(Dense::Bf16(v)) => v.iter().map(|&b| bf16(b)).collect(),
        other => panic!("expected a dequantized BF16 weight, got {other:?}"),
    }
}

/// Bit-exact against the README formulas, and close to the BF16 source: the relative
/// Frobenius error of each Linear stays under the preset's bound (the tensors with the
/// README's huge-outlier edits B2/B8 are left out of the bound: their error is the point).
#[test]
fn dequantization_matches_readme_formulas() {
    for (fixture, preset, _) in outputs() {
        if preset == "FP8_DYNAMIC" {
            continue; // kept as FP8 codes; covered by runtime_linear.rs
        }
        let (ck, w) = load(&dir(&format!("{fixture}-{preset}")));
        let (src_ck, src) = load(&dir(&format!("{fixture}-bf16")));
        drop(src_ck);
        let mut worst = 0.0f64;
        for (l, sl) in w.layers.iter().zip(&src.layers) {
            for (lin, slin) in l.linears().into_iter().zip(sl.linears()) {
                let raw = Raw {
                    ck: &ck,
                    module: lin.name.clone(),
                };
                let got = dense_f32(&lin.weight);
                let want = reference(&raw, preset, lin.rows, lin.cols);
                let diff = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    diff, None,
                    "{fixture}-{preset} {}: element differs",
                    lin.name
                );
                let s = dense_f32(&slin.weight);
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for (a, b) in got.iter().zip(&s) {
                    num += ((a - b) as f64).powi(2);
                    den += (*b as f64).powi(2);
                }
                let rel = (num / den.max(1e-300)).sqrt();
                let edited =
                    lin.name.ends_with("1.mlp.up_proj") || lin.name.ends_with("1.mlp.down_proj");
                if !edited {
                    worst = worst.max(rel);
                }
            }
        }
        let bound = match preset {
            "FP8_BLOCK" => 0.05,
            "W8A8" | "W8A16" => 0.01,
            _ => 0.15,
        };
        eprintln!("{fixture}-{preset}: worst relative error {worst:.4} (bound {bound})");
        assert!(
            worst < bound,
            "{fixture}-{preset}: relative error {worst} >= {bound}"
        );
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Runs 32 positions of each output and of its BF16 source; the logits are finite and the
/// top-1 token agrees at least at the preset's threshold.
#[test]
fn logits_agree_with_bf16() {
    let ids: Vec<u32> = (0..32u32).map(|i| (i * 97 + 13) % 512).collect();
    for (fixture, preset, min) in outputs() {
        let mut reference = load_cpu(&dir(&format!("{fixture}-bf16"))).unwrap();
        let want = reference.forward_logits(&ids, 0, true).unwrap().to_vec();
        let mut m = load_cpu(&dir(&format!("{fixture}-{preset}"))).unwrap();
        let vocab = m.config.vocab_size;
        let got = m.forward_logits(&ids, 0, true).unwrap();
        assert_eq!(got.len(), ids.len() * vocab);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{fixture}-{preset}: non-finite logits"
        );
        let agree = got
            .chunks(vocab)
            .zip(want.chunks(vocab))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count() as f64
            / ids.len() as f64;
        eprintln!("{fixture}-{preset}: top-1 agreement {agree:.3} (min {min})");
        assert!(
            agree >= min,
            "{fixture}-{preset}: top-1 agreement {agree} < {min}"
        );
    }
}
