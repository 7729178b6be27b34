//! The CPU runtime on every preset `qforge quantize` writes (fixtures/schemes): the
//! load-time dequantization equals an independent one written here from the fixtures
//! README's "dequant" formulas, bit for bit; it stays within each preset's error of the BF16
//! source; and the logits of each quantized model agree with the BF16 model's.

mod common;

use qforge::checkpoint::Checkpoint;
use qforge::runtime::config::ModelConfig;
use qforge::runtime::cpu::load_cpu;
use qforge::runtime::weights::{Dense, Linear, LinearWeight, Weights};
use std::path::PathBuf;

/// Every preset with the gates of `logits_agree_with_bf16`: the minimum top-1 agreement with
/// the BF16 model over 32 positions, and the maximum relative error of the residual stream
/// after layer 0. Measured (both fixtures, `cargo test --release --test runtime_presets --
/// --nocapture`): top-1 FP8_DYNAMIC 0.44/0.56, FP8_BLOCK 0.125/0.31, W8A8 0.75/0.59, W8A16
/// 0.91, W4A16 0.31, W4A16_ASYM 0.16, NVFP4A16 0.22/0.38, MXFP4A16 0.13/0.56; layer-0 error
/// FP8_DYNAMIC 0.048/0.069, FP8_BLOCK 0.046/0.048, W8A8 0.013/0.101, W8A16 0.009, W4A16 0.136,
/// W4A16_ASYM 0.132, NVFP4A16 0.118/0.130, MXFP4A16 0.150/0.138. Each gate is one position
/// (1/32) below, or ~20% above, the worst fixture. The top-1 numbers are low because these
/// are random models with nearly flat logits and the fixtures' edits hit layer 1 hard: FP8_BLOCK
/// zeroes the 128×128 block of `up_proj` around the 1e30 row (B8), NVFP4A16 zeroes layer 1's
/// `gate_proj` (shared global scale with that row), the 300.0 outlier (B2) flattens its row of
/// `down_proj` in the per-row presets. W8A8 quantizes its activations to int8 per token (a
/// uniform grid of amax/127, unlike FP8's relative one); its high unaligned layer-0 error most
/// likely comes from edit U2 (a 100.0 weight in layer 0's `down_proj`), which multiplies the
/// int8 rounding error of one activation by 100.
/// Chance level is 1/512.
const PRESETS: [(&str, f64, f64); 8] = [
    ("FP8_DYNAMIC", 0.40, 0.085),
    ("FP8_BLOCK", 0.09, 0.06),
    ("W8A8", 0.56, 0.12),
    ("W8A16", 0.87, 0.011),
    ("W4A16", 0.28, 0.165),
    ("W4A16_ASYM", 0.12, 0.16),
    ("NVFP4A16", 0.18, 0.16),
    ("MXFP4A16", 0.09, 0.18),
];

fn dir(name: &str) -> PathBuf {
    common::shared().join("fixtures/schemes").join(name)
}

/// The `(fixture, preset)` outputs that exist (the unaligned fixture lacks the group-128 ones).
fn outputs() -> Vec<(&'static str, &'static str, f64, f64)> {
    let mut v = Vec::new();
    for fixture in ["g128", "unaligned"] {
        for (preset, min, max_err) in PRESETS {
            if dir(&format!("{fixture}-{preset}")).is_dir() {
                v.push((fixture, preset, min, max_err));
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

fn dense_f32(lin: &Linear) -> Vec<f32> {
    match &lin.weight {
        LinearWeight::Dense(Dense::Bf16(v)) => v.iter().map(|&b| bf16(b)).collect(),
        // W8A8 stays int8 codes at run time, and FP8_BLOCK (whole blocks of columns) codes +
        // block scales: their dequantized values, rounded like the others.
        w @ (LinearWeight::Int8 { .. } | LinearWeight::Fp8Block { .. }) => {
            let cols = lin.cols;
            (0..lin.rows * cols)
                .map(|i| round_bf16(w.value(i / cols, i % cols, cols)))
                .collect()
        }
        other => panic!("expected a dequantized BF16 weight, got {other:?}"),
    }
}

/// Bit-exact against the README formulas, and close to the BF16 source: the relative
/// Frobenius error of each Linear stays under the preset's bound (the tensors with the
/// README's huge-outlier edits B2/B8 are left out of the bound: their error is the point).
#[test]
fn dequantization_matches_readme_formulas() {
    for (fixture, preset, _, _) in outputs() {
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
                let got = dense_f32(lin);
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
                let s = dense_f32(slin);
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for (a, b) in got.iter().zip(&s) {
                    num += ((a - b) as f64).powi(2);
                    den += (*b as f64).powi(2);
                }
                let rel = (num / den.max(1e-300)).sqrt();
                let edited = lin.name.ends_with("1.mlp.up_proj")
                    || lin.name.ends_with("1.mlp.down_proj")
                    || (preset == "NVFP4A16" && lin.name.ends_with("1.mlp.gate_proj"));
                if !edited {
                    worst = worst.max(rel);
                }
            }
        }
        let bound = match preset {
            "FP8_BLOCK" => 0.05,
            "W8A8" | "W8A16" => 0.02,
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

/// `rms(got − want) / rms(want)`: the logit error relative to the logits' size.
fn rel_rms(got: &[f32], want: &[f32]) -> f64 {
    let sq = |v: f32| (v as f64) * (v as f64);
    let num: f64 = got.iter().zip(want).map(|(a, b)| sq(a - b)).sum();
    let den: f64 = want.iter().map(|&b| sq(b)).sum();
    (num / den).sqrt()
}

/// Zeroes row 1 of layer 1's `up_proj` (edit B8: weights near 1e30 up to the BF16 maximum,
/// which overflow f32 in every model, the BF16 source included) so that logits are finite.
fn defuse(m: &mut qforge::runtime::cpu::CpuModel) {
    let up = &mut m.weights.layers[1].up_proj;
    let row = up.cols..2 * up.cols;
    match &mut up.weight {
        LinearWeight::Dense(Dense::Bf16(v)) => v[row].fill(0),
        LinearWeight::Fp8 { codes, .. } => codes[row].fill(0),
        LinearWeight::Int8 { codes, .. } => codes[row].fill(0),
        LinearWeight::Fp8Block { codes, .. } => codes[row].fill(0),
        other => panic!("unexpected up_proj weight {other:?}"),
    }
}

/// Runs 32 positions of each output and of its BF16 source (edit B8 defused in both): the
/// logits are finite, the top-1 token agrees and the residual stream after layer 0 stays
/// close, at each preset's gate ([`PRESETS`]).
#[test]
fn logits_agree_with_bf16() {
    let ids: Vec<u32> = (0..32u32).map(|i| (i * 97 + 13) % 512).collect();
    let mut failed = Vec::new();
    for (fixture, preset, min, max_err) in outputs() {
        let mut reference = load_cpu(&dir(&format!("{fixture}-bf16"))).unwrap();
        defuse(&mut reference);
        let (want, want_trace) = reference.forward_trace(&ids, 0, true).unwrap();
        let mut m = load_cpu(&dir(&format!("{fixture}-{preset}"))).unwrap();
        defuse(&mut m);
        let vocab = m.config.vocab_size;
        let (got, trace) = m.forward_trace(&ids, 0, true).unwrap();
        let got = &got[..];
        let layer0 = rel_rms(
            &trace["residual_after_mlp.0"],
            &want_trace["residual_after_mlp.0"],
        );
        assert_eq!(got.len(), ids.len() * vocab);
        let fin = |v: &[f32]| v.iter().filter(|x| x.is_finite()).count();
        eprintln!(
            "{fixture}-{preset}: finite {} of {}, reference {}",
            fin(got),
            got.len(),
            fin(&want)
        );
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
        let rel = rel_rms(got, &want);
        eprintln!("{fixture}-{preset}: top-1 agreement {agree:.3} (min {min}), logit error {rel:.4}, layer-0 error {layer0:.4}");
        if agree < min {
            failed.push(format!(
                "{fixture}-{preset}: top-1 agreement {agree} < {min}"
            ));
        }
        if layer0 > max_err {
            failed.push(format!(
                "{fixture}-{preset}: layer-0 error {layer0} > {max_err}"
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}

/// FP8_BLOCK with whole column blocks (the g128 fixture) runs vLLM's block path: activations
/// quantized per token and 128-column group (`s = max(amax, 1e-10) / 448`), per group an
/// exact sum, scaled by both scales and summed in f32 in group order — bit for bit against
/// that formula written here, on inputs with a zero group, a huge group and a tiny one.
#[test]
fn fp8_block_linears_run_the_vllm_block_path() {
    use qforge::numerics::{e4m3_to_f32, f32_to_e4m3};
    let (_ck, w) = load(&dir("g128-FP8_BLOCK"));
    let mut checked = 0;
    for lin in w.layers.iter().flat_map(|l| l.linears()) {
        let LinearWeight::Fp8Block {
            codes,
            scales,
            block_rows,
            block_cols,
        } = &lin.weight
        else {
            panic!("{}: expected FP8_BLOCK codes", lin.name)
        };
        let (n, k, bc) = (lin.rows, lin.cols, *block_cols);
        let groups = k / bc;
        let t = 3;
        let mut x: Vec<f32> = (0..t * k)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 3.0)
            .collect();
        x[..bc].fill(0.0); // row 0, group 0: all zero (scale from the 1e-10 floor)
        for v in &mut x[k + bc..k + 2 * bc] {
            *v *= 1e4; // row 1, group 1: huge
        }
        for v in &mut x[2 * k..2 * k + bc] {
            *v *= 1e-6; // row 2, group 0: tiny
        }
        let got = qforge::runtime::cpu::linear::run_linear(lin, &x).unwrap();
        for r in 0..t {
            for row in 0..n {
                let mut y = 0.0f32;
                for g in 0..groups {
                    let xs = &x[r * k + g * bc..r * k + (g + 1) * bc];
                    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let sa = amax.max(1e-10) / 448.0;
                    let exact: f64 = xs
                        .iter()
                        .zip(&codes[row * k + g * bc..])
                        .map(|(&v, &c)| {
                            let q = e4m3_to_f32(f32_to_e4m3((v / sa).clamp(-448.0, 448.0)));
                            q as f64 * e4m3_to_f32(c) as f64
                        })
                        .sum();
                    y += exact as f32 * sa * scales[(row / block_rows) * groups + g];
                }
                let v = got.y[r * n + row];
                assert!(
                    v.to_bits() == y.to_bits(),
                    "{} row {row} token {r}: {v} vs {y}",
                    lin.name
                );
            }
        }
        assert_eq!(got.x_scale.len(), t * groups);
        checked += 1;
    }
    assert_eq!(checked, 14, "every Linear of both layers");
}
