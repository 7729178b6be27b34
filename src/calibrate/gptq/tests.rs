//! GPTQ on small matrices whose results are worked out independently.

use super::*;
use crate::recipe::{find_preset, QuantArgs, QuantType, Strategy};
use half::bf16;

fn preset_weights(name: &str) -> QuantArgs {
    find_preset(name).unwrap().args().unwrap().weights.unwrap()
}

/// Deterministic BF16-representable values in about [-1, 1].
fn bf16_values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            bf16::from_f32((state % 20_001) as f32 / 10_000.0 - 1.0).to_f32()
        })
        .collect()
}

/// A Hessian whose sample `t` is one token holding `scale[t]` in feature `t` only, so
/// `H / n` is diagonal with entries `2·scale²/n` (every feature must get one sample).
fn diagonal_hessian(diag_scale: &[f32]) -> Hessian {
    let n = diag_scale.len();
    let mut h = Hessian::new(n);
    for (t, &s) in diag_scale.iter().enumerate() {
        let mut x = vec![0.0; n];
        x[t] = s;
        h.add_batch(&x, 1).unwrap();
    }
    h
}

/// Round-to-nearest as written in compressed-tensors' `_quantize_dequantize` (symmetric
/// int): `q = rint(clamp(w / s))` in f32; `bf16(q · s)`.
fn rtn_sym(w: f32, s: f32, bits: u32) -> (i8, f32) {
    let hi = ((1 << (bits - 1)) - 1) as f32;
    let q = (w / s).clamp(-hi - 1.0, hi).round_ties_even();
    (q as i8, bf16::from_f32(q * s).to_f32())
}

/// A row-major 2 × 2 matrix as faer's.
fn mat2(v: [f32; 4]) -> faer::Mat<f32> {
    faer::Mat::from_fn(2, 2, |i, j| v[i * 2 + j])
}

fn dequantized(r: &GptqResult) -> Vec<f32> {
    r.dequantized
        .iter()
        .map(|&b| bf16::from_bits(b).to_f32())
        .collect()
}

#[test]
fn diagonal_hessian_is_round_to_nearest_w4a16() {
    let (rows, cols) = (4, 256);
    let w = bf16_values(rows * cols, 1);
    let diag: Vec<f32> = (0..cols).map(|j| 0.5 + (j % 7) as f32).collect();
    let h = diagonal_hessian(&diag);
    let args = preset_weights("W4A16");
    for actorder in [false, true] {
        let opts = GptqOptions {
            actorder,
            ..GptqOptions::default()
        };
        let r = quantize_weight(&w, rows, cols, &h, &opts, &args).unwrap();
        assert_eq!(r.scales.len(), rows * 2);
        assert!(!r.rtn_fallback);
        for (i, &x) in w.iter().enumerate() {
            let (row, g) = (i / cols, (i % cols) / 128);
            let s = bf16::from_bits(r.scales[row * 2 + g]).to_f32();
            // The scale is the data-free observer's: absmax / 7.5 in BF16.
            let absmax = w[row * cols + g * 128..][..128]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(s, bf16::from_f32(absmax / 7.5).to_f32());
            let (q, d) = rtn_sym(x, s, 4);
            assert_eq!(r.codes[i] as i8, q, "actorder {actorder}, element {i}");
            assert_eq!(dequantized(&r)[i], d);
        }
        assert!(r.zero_points.iter().all(|&z| z == 0));
    }
}

#[test]
fn two_columns_propagate_the_error_by_h01_over_h11() {
    // One row [0.75, 0.23], int4 per channel: s = bf16(0.75 / 7.5). Samples x = (1, 0) and
    // (1, 1): H = 2·[[2, 1], [1, 1]] / 2 = [[2, 1], [1, 1]]. Without dampening, quantizing
    // column 0 moves column 1 by (w0 - q0)·H01/H11 = (w0 - q0) (the OBQ update), which
    // turns column 1's code from 2 (round-to-nearest) into 3.
    let w = [0.75f32, 0.23];
    let w = w.map(|x| bf16::from_f32(x).to_f32());
    let mut h = Hessian::new(2);
    h.add_batch(&[1.0, 0.0], 1).unwrap();
    h.add_batch(&[1.0, 1.0], 1).unwrap();
    let mut args = QuantArgs::new(4, QuantType::Int, Strategy::Channel);
    args.symmetric = true;
    let opts = GptqOptions {
        block_size: 128,
        dampening_frac: 0.0,
        actorder: false,
        ..GptqOptions::default()
    };
    let r = quantize_weight(&w, 1, 2, &h, &opts, &args).unwrap();
    let s = bf16::from_f32(0.75 / 7.5).to_f32();
    let (q0, d0) = rtn_sym(w[0], s, 4);
    let (q1_rtn, _) = rtn_sym(w[1], s, 4);
    let (q1, d1) = rtn_sym(w[1] + (w[0] - d0) * 1.0, s, 4);
    assert_eq!((q0, q1_rtn, q1), (7, 2, 3));
    assert_eq!(r.codes, vec![7u8, 3]);
    assert_eq!(dequantized(&r), vec![d0, d1]);
    // loss: err0 = (w0 - d0) / Hinv00 with Hinv00 = sqrt((H^-1)00) = sqrt(1) ...
    assert!(r.loss > 0.0);
    // The same block split into blocks of one column propagates through the GEMM instead.
    let one = GptqOptions {
        block_size: 1,
        ..opts
    };
    assert_eq!(
        quantize_weight(&w, 1, 2, &h, &one, &args).unwrap().codes,
        vec![7u8, 3]
    );
}

#[test]
fn actorder_quantizes_the_busiest_column_first() {
    // Same matrix as above with the columns swapped: x = (0, 1) and (1, 1) make column 1
    // the busier one (H11 = 2 > H00 = 1). Without activation ordering column 0 goes first and
    // its error moves column 1; with it column 1 goes first and moves column 0.
    let w = [0.23f32, 0.75].map(|x| bf16::from_f32(x).to_f32());
    let mut h = Hessian::new(2);
    h.add_batch(&[0.0, 1.0], 1).unwrap();
    h.add_batch(&[1.0, 1.0], 1).unwrap();
    let args = QuantArgs::new(4, QuantType::Int, Strategy::Channel);
    let mut opts = GptqOptions {
        block_size: 128,
        dampening_frac: 0.0,
        actorder: true,
        ..GptqOptions::default()
    };
    let ordered = quantize_weight(&w, 1, 2, &h, &opts, &args).unwrap();
    assert_eq!(ordered.codes, vec![3u8, 7]);
    opts.actorder = false;
    let plain = quantize_weight(&w, 1, 2, &h, &opts, &args).unwrap();
    // Column 0 (0.23) rounds to 2; H⁻¹ = [[2, -1], [-1, 1]] moves column 1 by
    // (0.23 - 0.2)·1/2, and it stays at 7.
    assert_eq!(plain.codes, vec![2u8, 7]);
}

#[test]
fn dead_columns_are_zeroed() {
    // Feature 1 never fires: its weight column becomes 0 whatever it held.
    let w = [0.5f32, -0.9, 0.25, 0.125, 0.7, -0.3];
    let mut h = Hessian::new(3);
    h.add_batch(&[1.0, 0.0, 0.5, 0.3, 0.0, -1.0], 2).unwrap();
    let args = preset_weights("W8A8");
    let r = quantize_weight(&w, 2, 3, &h, &GptqOptions::default(), &args).unwrap();
    assert_eq!((r.codes[1], r.codes[4]), (0, 0));
    assert_eq!((r.dequantized[1], r.dequantized[4]), (0, 0));
    // The scales still see the original weight (observer before GPTQ): 0.9 / 127.5.
    assert_eq!(
        bf16::from_bits(r.scales[0]).to_f32(),
        bf16::from_f32(0.9 / 127.5).to_f32()
    );
}

#[test]
fn a_hessian_that_is_not_positive_definite_falls_back_to_identity() {
    // [[1, 2], [2, 1]] has a negative eigenvalue: llm-compressor's Cholesky fails and it uses
    // the identity, which makes the column loop round-to-nearest.
    let mut w = [0.5f32, 0.25];
    let (hinv, fallback) =
        solve::factorize(mat2([1.0, 2.0, 2.0, 1.0]), 2, &mut w, 0.0, TorchCpu::Avx2).unwrap();
    assert!(fallback);
    assert_eq!(hinv, vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(w, [0.5, 0.25]);
    // A positive definite one: H = [[4, 2], [2, 2]], H⁻¹ = [[0.5, -0.5], [-0.5, 1]], whose
    // upper Cholesky factor is [[√0.5, -√0.5], [0, √0.5]].
    let (hinv, fallback) =
        solve::factorize(mat2([4.0, 2.0, 2.0, 2.0]), 2, &mut w, 0.0, TorchCpu::Avx2).unwrap();
    assert!(!fallback);
    let r = 0.5f32.sqrt();
    for (got, want) in hinv.iter().zip([r, -r, 0.0, r]) {
        assert!((got - want).abs() < 1e-6, "{hinv:?}");
    }
    // Dampening adds frac · mean(diag) = 0.5 · 3 to the diagonal: H = [[5.5, 2], [2, 3.5]].
    let (hinv, _) =
        solve::factorize(mat2([4.0, 2.0, 2.0, 2.0]), 2, &mut w, 0.5, TorchCpu::Avx2).unwrap();
    let det = 5.5 * 3.5 - 4.0;
    assert!((hinv[0] - (3.5f32 / det).sqrt()).abs() < 1e-6, "{hinv:?}");
    assert!((hinv[3] - (1.0f32 / 3.5).sqrt()).abs() < 1e-6, "{hinv:?}");
}

#[test]
fn an_overflowing_hessian_falls_back_to_round_to_nearest() {
    // (√2·1e20)² overflows f32: H holds Inf, as in llm-compressor's fixture run (layer 1
    // down_proj), which then quantizes that module round-to-nearest.
    let w = [0.75f32, 0.23].map(|x| bf16::from_f32(x).to_f32());
    let mut h = Hessian::new(2);
    h.add_batch(&[1e20, 1.0], 1).unwrap();
    h.add_batch(&[1.0, 1.0], 1).unwrap();
    let args = QuantArgs::new(4, QuantType::Int, Strategy::Channel);
    let r = quantize_weight(&w, 1, 2, &h, &GptqOptions::default(), &args).unwrap();
    assert!(r.rtn_fallback);
    assert_eq!(r.codes, vec![7u8, 2]);
}

#[test]
fn asymmetric_groups_keep_zero_points_and_codes_in_range() {
    let (rows, cols) = (3, 128);
    let w: Vec<f32> = bf16_values(rows * cols, 7)
        .iter()
        .map(|x| bf16::from_f32(x + 0.4).to_f32())
        .collect();
    let mut h = Hessian::new(cols);
    for s in 0..4 {
        h.add_batch(&bf16_values(16 * cols, 100 + s), 16).unwrap();
    }
    let mut args = preset_weights("W4A16_ASYM");
    args.group_size = Some(64);
    let r = quantize_weight(&w, rows, cols, &h, &GptqOptions::default(), &args).unwrap();
    assert_eq!((r.scales.len(), r.zero_points.len()), (rows * 2, rows * 2));
    assert!(r.zero_points.iter().any(|&z| z != 0));
    assert!(r.codes.iter().all(|&c| (-8..=7).contains(&(c as i8))));
    // Every dequantized value is (code - zp) · s in BF16.
    for (i, &c) in r.codes.iter().enumerate() {
        let k = (i / cols) * 2 + (i % cols) / 64;
        let s = bf16::from_bits(r.scales[k]).to_f32();
        let want = bf16::from_f32((c as i8 as f32 - r.zero_points[k] as f32) * s);
        assert_eq!(r.dequantized[i], want.to_bits(), "element {i}");
    }
}

#[test]
fn gptq_lowers_the_output_error_of_round_to_nearest() {
    // The point of GPTQ: ‖X(W - Q)ᵀ‖² on the calibration inputs is smaller than with
    // round-to-nearest, for correlated inputs.
    let (rows, cols, tokens) = (8, 64, 96);
    let base = bf16_values(tokens * cols, 3);
    let x: Vec<f32> = base
        .chunks(cols)
        .flat_map(|r| {
            let common = r[0];
            r.iter()
                .map(move |v| bf16::from_f32(0.6 * common + 0.4 * v).to_f32())
        })
        .collect();
    let mut h = Hessian::new(cols);
    h.add_batch(&x, tokens).unwrap();
    let w = bf16_values(rows * cols, 9);
    let args = QuantArgs::new(4, QuantType::Int, Strategy::Channel);
    let gptq = quantize_weight(&w, rows, cols, &h, &GptqOptions::default(), &args).unwrap();
    let diag = vec![1.0f32; cols];
    let rtn = quantize_weight(
        &w,
        rows,
        cols,
        &diagonal_hessian(&diag),
        &GptqOptions::default(),
        &args,
    )
    .unwrap();
    let out_err = |r: &GptqResult| -> f64 {
        let q = dequantized(r);
        x.chunks(cols)
            .flat_map(|xt| {
                (0..rows).map(|o| {
                    let d: f64 = (0..cols)
                        .map(|j| xt[j] as f64 * (w[o * cols + j] - q[o * cols + j]) as f64)
                        .sum();
                    d * d
                })
            })
            .sum()
    };
    let (e_gptq, e_rtn) = (out_err(&gptq), out_err(&rtn));
    assert!(e_gptq < 0.8 * e_rtn, "GPTQ {e_gptq} vs RTN {e_rtn}");
}

#[test]
fn fp8_channel_diagonal_is_round_to_nearest() {
    let (rows, cols) = (2, 32);
    let w = bf16_values(rows * cols, 5);
    let h = diagonal_hessian(&vec![1.0; cols]);
    let args = preset_weights("FP8_DYNAMIC");
    let r = quantize_weight(&w, rows, cols, &h, &GptqOptions::default(), &args).unwrap();
    for (i, &x) in w.iter().enumerate() {
        let s = bf16::from_bits(r.scales[i / cols]).to_f32();
        let code = crate::numerics::f32_to_e4m3((x / s).clamp(-448.0, 448.0));
        let v = crate::numerics::e4m3_to_f32(code);
        assert_eq!(
            r.dequantized[i],
            bf16::from_f32(v * s).to_bits(),
            "element {i}"
        );
        assert_eq!(r.codes[i], code, "element {i}");
    }
}

#[test]
fn actorder_values_follow_compressed_tensors() {
    assert!(actorder_enabled(Some("static")).unwrap());
    assert!(actorder_enabled(Some("weight")).unwrap());
    assert!(!actorder_enabled(None).unwrap());
    let e = actorder_enabled(Some("group")).unwrap_err().to_string();
    assert!(e.contains("has been removed"), "{e}");
    assert!(actorder_enabled(Some("sideways")).is_err());
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let h = diagonal_hessian(&[1.0, 1.0]);
    let args = QuantArgs::new(4, QuantType::Int, Strategy::Channel);
    let o = GptqOptions::default();
    assert!(quantize_weight(&[0.0; 3], 1, 2, &h, &o, &args).is_err());
    assert!(quantize_weight(&[0.0; 3], 1, 3, &h, &o, &args).is_err());
    assert!(quantize_weight(&[0.0, f32::NAN], 1, 2, &h, &o, &args).is_err());
    let e = quantize_weight(&[0.0; 2], 1, 2, &Hessian::new(2), &o, &args).unwrap_err();
    assert!(e.to_string().contains("no calibration samples"), "{e}");
    let mut g = args.clone();
    g.strategy = Strategy::Group;
    g.group_size = Some(3);
    assert!(quantize_weight(&[0.0; 2], 1, 2, &h, &o, &g).is_err());
    let block = QuantArgs::new(8, QuantType::Float, Strategy::Block);
    assert!(quantize_weight(&[0.0; 2], 1, 2, &h, &o, &block).is_err());
}

/// The damping is torch's `percdamp * mean(diag)`: on SmolLM2's layer-0 q/k/v Hessian
/// (4 × 256 tokens, columns in activation order) torch's f32 sum gives 0x3c43e734, one ulp
/// below the exactly summed diagonal's 0x3c43e735.
#[test]
fn damping_sums_the_diagonal_as_torch_does() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gptq-xtx/smollm2-l0-qkv-diag.f32");
    let diag: Vec<f32> = std::fs::read(&path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(diag.len(), 576);
    assert_eq!(
        solve::damping(&diag, 0.01, TorchCpu::Avx2).to_bits(),
        0x3c43_e734
    );
    let exact = diag.iter().map(|&v| v as f64).sum::<f64>() as f32 / 576.0;
    assert_eq!((0.01f32 * exact).to_bits(), 0x3c43_e735);
}
