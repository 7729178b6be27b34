//! GPTQ against llm-compressor 0.14.0.1 (fixtures/calibration): layer 0's q/k/v_proj see
//! `input_layernorm(embed_tokens(ids))`, computed here as transformers computes it in BF16,
//! so their Hessians, and then their codes and scales, can be checked against the
//! reference outputs without a calibration pipeline.

use crate::support::fixture;
use half::bf16;
use qforge::calibrate::gptq::{quantize_weight, GptqOptions, GptqResult, Hessian};
use qforge::checkpoint::{Checkpoint, DType};
use qforge::recipe::{find_preset, QuantArgs, QuantType, Strategy};
use std::path::Path;

const HIDDEN: usize = 128;
const PROJS: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

fn bf16s(ck: &Checkpoint, name: &str) -> Vec<f32> {
    let t = ck.get(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(t.dtype, DType::BF16, "{name}");
    ck.data(t)
        .chunks_exact(2)
        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}

/// transformers 5.17 `LlamaRMSNorm` on a BF16 row: f32 mean of squares, `x * rsqrt(var +
/// eps)` in f32, back to BF16, times the BF16 weight (rounded to BF16).
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let var = (x.iter().map(|&v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    let r = 1.0 / (var + eps).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &g)| bf16::from_f32(g * bf16::from_f32(v * r).to_f32()).to_f32())
        .collect()
}

/// The order in which llm-compressor 0.14 feeds the 32 samples (all 64 tokens long):
/// `LengthAwareSampler` takes `torch.argsort(lengths, descending=True)`, an unstable sort
/// (std::sort-like) that scrambles equal lengths. The Hessian is a float sum: adding the
/// samples in this order reproduces llm-compressor's bit for bit.
const SAMPLE_ORDER: [usize; 32] = [
    16, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 0, 15, 14, 13, 12, 11, 10, 9,
    8, 7, 6, 5, 4, 3, 2, 1,
];

/// The Hessian of layer 0's q/k/v_proj input over the 32 calibration samples.
fn layer0_qkv_hessian(model: &Checkpoint) -> Hessian {
    let ids: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("calibration/g128-ids.json")).unwrap(),
    )
    .unwrap();
    let embed = bf16s(model, "model.embed_tokens.weight");
    let norm = bf16s(model, "model.layers.0.input_layernorm.weight");
    let samples = ids["input_ids"].as_array().unwrap();
    assert_eq!(samples.len(), SAMPLE_ORDER.len());
    let mut h = Hessian::new(HIDDEN);
    for sample in SAMPLE_ORDER.map(|i| &samples[i]) {
        let ids: Vec<usize> = sample
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let x: Vec<f32> = ids
            .iter()
            .flat_map(|&i| rms_norm(&embed[i * HIDDEN..][..HIDDEN], &norm, 1e-5))
            .collect();
        h.add_batch(&x, ids.len()).unwrap();
    }
    assert_eq!(h.nsamples(), 32);
    h
}

/// The reference codes of a tensor (unpacking int4 `weight_packed`), its scales as BF16 bits.
fn reference(ck: &Checkpoint, prefix: &str, bits: u32) -> (Vec<i8>, Vec<u16>) {
    let scales = ck.get(&format!("{prefix}.weight_scale")).unwrap();
    let scales: Vec<u16> = ck
        .data(scales)
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if bits == 8 {
        let w = ck.get(&format!("{prefix}.weight")).unwrap();
        return (ck.data(w).iter().map(|&b| b as i8).collect(), scales);
    }
    let packed = ck.get(&format!("{prefix}.weight_packed")).unwrap();
    let codes = ck
        .data(packed)
        .chunks_exact(4)
        .flat_map(|c| {
            let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (0..8).map(move |i| ((w >> (4 * i)) & 0xF) as i8 - 8)
        })
        .collect();
    (codes, scales)
}

struct Diff {
    codes: usize,
    total: usize,
    max_scale_ulps: u16,
}

fn compare(ours: &GptqResult, codes: &[i8], scales: &[u16]) -> Diff {
    assert_eq!(ours.codes.len(), codes.len());
    assert_eq!(ours.scales.len(), scales.len());
    let differ = ours
        .codes
        .iter()
        .zip(codes)
        .filter(|(&a, &b)| a as i8 != b)
        .count();
    let ulps = ours
        .scales
        .iter()
        .zip(scales)
        .map(|(&a, &b)| (a as i16 - b as i16).unsigned_abs())
        .max()
        .unwrap_or(0);
    Diff {
        codes: differ,
        total: codes.len(),
        max_scale_ulps: ulps,
    }
}

/// Runs GPTQ on layer 0's q/k/v with `args` and `options`, compares with the fixture
/// `case`, prints the counts and returns the worst fraction of differing codes.
fn check_case(case: &str, args: &QuantArgs, options: &GptqOptions) -> f64 {
    let model = Checkpoint::open(&fixture("schemes/g128-bf16")).unwrap();
    let out = Checkpoint::open(Path::new(&fixture("calibration").join(case))).unwrap();
    let h = layer0_qkv_hessian(&model);
    let mut worst = 0.0f64;
    for proj in PROJS {
        let prefix = format!("model.layers.0.self_attn.{proj}");
        let w = bf16s(&model, &format!("{prefix}.weight"));
        let rows = w.len() / HIDDEN;
        let ours = quantize_weight(&w, rows, HIDDEN, &h, options, args).unwrap();
        let (codes, scales) = reference(&out, &prefix, args.num_bits);
        let d = compare(&ours, &codes, &scales);
        println!(
            "{case} {proj}: {} of {} codes differ, scales max {} ulp",
            d.codes, d.total, d.max_scale_ulps
        );
        assert_eq!(d.max_scale_ulps, 0, "{case} {proj}: scales differ");
        worst = worst.max(d.codes as f64 / d.total as f64);
    }
    worst
}

fn weights_of(preset: &str) -> QuantArgs {
    find_preset(preset)
        .unwrap()
        .args()
        .unwrap()
        .weights
        .unwrap()
}

#[test]
fn layer0_qkv_match_llm_compressor_gptq_w4a16() {
    let worst = check_case(
        "g128-gptq_w4a16",
        &weights_of("W4A16"),
        &GptqOptions::default(),
    );
    assert!(worst <= 0.001, "{:.4}% of codes differ", worst * 100.0);
}

#[test]
fn layer0_qkv_match_llm_compressor_gptq_w8a8() {
    let worst = check_case(
        "g128-gptq_w8a8",
        &weights_of("W8A8"),
        &GptqOptions::default(),
    );
    assert!(worst <= 0.001, "{:.4}% of codes differ", worst * 100.0);
}

#[test]
fn layer0_qkv_match_llm_compressor_gptq_w4g64_actorder_weight() {
    let mut args = QuantArgs::new(4, QuantType::Int, Strategy::Group);
    args.group_size = Some(64);
    let options = GptqOptions {
        block_size: 128,
        dampening_frac: 0.05,
        actorder: true,
        ..GptqOptions::default()
    };
    let worst = check_case("g128-gptq_w4g64_actorder_weight", &args, &options);
    assert!(worst <= 0.001, "{:.4}% of codes differ", worst * 100.0);
}

/// Deterministic BF16-representable values in about [-1, 1].
fn bf16_noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((s % 20_001) as f32 / 10_000.0 - 1.0).to_f32()
        })
        .collect()
}

/// One GPTQ of a `rows × cols` W4A16 weight with a Hessian of 2048 correlated tokens; prints
/// the time of the Hessian and of `quantize_weight`, and returns the latter in seconds.
fn timed_gptq(rows: usize, cols: usize) -> f64 {
    let tokens = 2048;
    let noise = bf16_noise(tokens * cols, 11);
    let x: Vec<f32> = noise
        .chunks(cols)
        .flat_map(|r| {
            let c = r[0];
            r.iter()
                .map(move |v| bf16::from_f32(0.5 * c + 0.5 * v).to_f32())
        })
        .collect();
    let t = std::time::Instant::now();
    let mut h = Hessian::new(cols);
    h.add_batch(&x, tokens).unwrap();
    let hessian_s = t.elapsed().as_secs_f64();
    let w = bf16_noise(rows * cols, 12);
    let args = weights_of("W4A16");
    let t = std::time::Instant::now();
    let r = quantize_weight(&w, rows, cols, &h, &GptqOptions::default(), &args).unwrap();
    let solve_s = t.elapsed().as_secs_f64();
    println!(
        "GPTQ {rows}x{cols}: Hessian of {tokens} tokens {hessian_s:.3} s, quantize_weight \
         {solve_s:.3} s ({} threads)",
        rayon::current_num_threads()
    );
    assert!(!r.rtn_fallback);
    solve_s
}

#[test]
fn gptq_of_a_2048_square_weight_takes_seconds() {
    let s = timed_gptq(2048, 2048);
    // ~16 GFLOP of Cholesky, inverse and error propagation: seconds even on 2 slow cores.
    assert!(s < 20.0, "{s:.1} s");
    assert!(timed_gptq(576, 1536) < 10.0);
}

/// Raw little-endian values of a file under tests/data/gptq-xtx (`scripts/gptq_xtx_ref.py`).
fn xtx_data(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gptq-xtx")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One sample's Hessian has the bits of llm-compressor's `accumulate_hessian` (torch's f32
/// matmul, MKL sgemm on an AVX2 CPU) for sample lengths that MKL sums as one chain (150
/// tokens), as two halves with the odd token apart (301) and as blocks of 192 (400). Summed
/// as one chain, 2,994 of the 4,096 values of the 301-token sample differ.
#[test]
fn hessian_sums_each_sample_in_mkl_order() {
    const N: usize = 64;
    for k in [150, 301, 400] {
        let x: Vec<f32> = xtx_data(&format!("k{k}.x.bf16"))
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        let torch: Vec<u32> = xtx_data(&format!("k{k}.h.f32"))
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!((x.len(), torch.len()), (k * N, N * N));
        let mut h = Hessian::new(N);
        h.add_batch(&x, k).unwrap();
        let differ = h
            .sum()
            .iter()
            .zip(&torch)
            .filter(|(a, &b)| a.to_bits() != b)
            .count();
        assert_eq!(differ, 0, "{k} tokens: {differ} of {} values differ", N * N);
    }
}
