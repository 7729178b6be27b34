//! FP8 numerics against an independent reference written here (exact decoding of all 256 E4M3
//! codes, nearest-even by comparison, f64 ulp-grid rounding to BF16/F16), exhaustive over every
//! finite BF16 value; and the FP8_DYNAMIC tiny fixtures byte for byte.

mod common;

use qforge::checkpoint::{Checkpoint, DType};
use qforge::numerics::{
    e4m3_to_f32, f32_to_e4m3, fp8_scale, quantize_fp8_channel, quantize_fp8_channel_into, to_f32,
    Fp8Rounding,
};

// ---- the reference -------------------------------------------------------------------------

/// Value of an E4M3 code from its definition (bias 7, 3 mantissa bits, 0x7F/0xFF NaN).
fn ref_decode(code: u8) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> 3) & 0xF) as i32;
    let m = (code & 7) as f64;
    if e == 15 && m == 7.0 {
        return f64::NAN;
    }
    let mag = if e == 0 {
        m / 8.0 * 2f64.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f64.powi(e - 7)
    };
    sign * mag
}

/// The 127 non-negative finite codes 0x00..=0x7E, ascending in value.
fn positive_grid() -> Vec<(f64, u8)> {
    let g: Vec<(f64, u8)> = (0u8..=0x7E).map(|c| (ref_decode(c), c)).collect();
    assert!(g.windows(2).all(|w| w[0].0 < w[1].0));
    g
}

/// Nearest E4M3 code of x (|x| ≤ 448) by comparison with all candidates; ties to the even
/// code; the sign bit follows the sign of x (so -0.0 and tiny negatives give 0x80).
fn ref_e4m3(grid: &[(f64, u8)], x: f64) -> u8 {
    let a = x.abs();
    assert!(a <= 448.0, "{x}");
    let mut best = grid[0];
    for &(v, c) in grid {
        let (d, bd) = ((v - a).abs(), (best.0 - a).abs());
        if d < bd || (d == bd && c & 1 == 0) {
            best = (v, c);
        }
    }
    best.1 | if x.is_sign_negative() { 0x80 } else { 0 }
}

/// Rounds x to a binary float with `mbits` mantissa bits and minimum normal exponent `emin`
/// (subnormals kept), ties to even, on the exact ulp grid.
fn ref_round(x: f64, mbits: i32, emin: i32) -> f64 {
    if x == 0.0 {
        return x;
    }
    let e = (x.abs().log2().floor() as i32).max(emin);
    // log2 may be off by one near powers of two; fix it up exactly.
    let e = if x.abs() < 2f64.powi(e) && e > emin {
        e - 1
    } else if x.abs() >= 2f64.powi(e + 1) {
        e + 1
    } else {
        e
    };
    let ulp = 2f64.powi(e - mbits);
    let r = (x / ulp).round_ties_even() * ulp;
    if r == 0.0 {
        0.0f64.copysign(x)
    } else {
        r
    }
}

fn ref_bf16(x: f64) -> f64 {
    ref_round(x, 7, -126)
}

fn ref_f16(x: f64) -> f64 {
    ref_round(x, 10, -14)
}

/// Every finite BF16 value as (bits, value).
fn finite_bf16() -> impl Iterator<Item = (u16, f64)> {
    (0..=u16::MAX)
        .filter(|b| b & 0x7F80 != 0x7F80)
        .map(|b| (b, f32::from_bits((b as u32) << 16) as f64))
}

// ---- scalar conversions --------------------------------------------------------------------

#[test]
fn e4m3_decode_table_matches_definition() {
    for c in 0..=255u8 {
        let (ours, reference) = (e4m3_to_f32(c) as f64, ref_decode(c));
        if reference.is_nan() {
            assert!(ours.is_nan(), "{c:#x}");
        } else {
            assert_eq!(ours.to_bits(), reference.to_bits(), "{c:#x}");
        }
    }
    assert_eq!(e4m3_to_f32(0x7E), 448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
}

#[test]
fn f32_to_e4m3_every_finite_bf16_value() {
    let grid = positive_grid();
    let mut n = 0;
    for (bits, v) in finite_bf16() {
        let x = v.clamp(-448.0, 448.0);
        assert_eq!(
            f32_to_e4m3(x as f32),
            ref_e4m3(&grid, x),
            "bf16 {bits:#06x} = {v}"
        );
        n += 1;
    }
    assert_eq!(n, 65536 - 256);
}

#[test]
fn f32_to_e4m3_at_every_midpoint() {
    let grid = positive_grid();
    for w in grid.windows(2) {
        let mid = ((w[0].0 + w[1].0) / 2.0) as f32; // exact in f32
        for x in [mid.next_down(), mid, mid.next_up()] {
            for x in [x, -x] {
                assert_eq!(f32_to_e4m3(x), ref_e4m3(&grid, x as f64), "{x}");
            }
        }
    }
    // Saturation above 448 (after the caller's clamp this never matters).
    for x in [448.5f32, 463.9, 464.0, 480.0, 1e4, f32::INFINITY] {
        assert_eq!(f32_to_e4m3(x), 0x7E, "{x}");
        assert_eq!(f32_to_e4m3(-x), 0xFE, "{x}");
    }
    assert_eq!(f32_to_e4m3(f32::NAN) & 0x7F, 0x7F);
    assert_eq!(f32_to_e4m3(-1e-30), 0x80);
}

// ---- the BF16 scale and quotient path ------------------------------------------------------

#[test]
fn bf16_scale_of_every_finite_absmax() {
    for (bits, a) in finite_bf16().filter(|(b, _)| b & 0x8000 == 0) {
        let r = ref_bf16(a / 448.0);
        let want = if r == 0.0 { 2f64.powi(-7) } else { r };
        assert_eq!(
            fp8_scale(DType::BF16, a as f32) as f64,
            want,
            "absmax {bits:#06x}"
        );
    }
    // fixtures/README.md §3.1: the smallest absmax giving a non-eps scale is 2.066e-38.
    assert_eq!(fp8_scale(DType::BF16, 0.0), 0.0078125);
}

/// Quantizes a BF16 row holding `absmax` and every finite BF16 value of magnitude ≤ absmax,
/// and checks each code and the scale against the reference.
fn check_bf16_row(grid: &[(f64, u8)], absmax_bits: u16) {
    let amax = f32::from_bits((absmax_bits as u32) << 16) as f64;
    let vals: Vec<(u16, f64)> = finite_bf16().filter(|&(_, v)| v.abs() <= amax).collect();
    let mut row: Vec<u8> = absmax_bits.to_le_bytes().to_vec();
    for (b, _) in &vals {
        row.extend_from_slice(&b.to_le_bytes());
    }
    let cols = vals.len() + 1;
    let (codes, scale) =
        quantize_fp8_channel("t", DType::BF16, &row, 1, cols, Fp8Rounding::Eager).unwrap();
    let r = ref_bf16(amax / 448.0);
    let s = if r == 0.0 { 2f64.powi(-7) } else { r };
    let sbits = u16::from_le_bytes([scale[0], scale[1]]);
    assert_eq!(
        f32::from_bits((sbits as u32) << 16) as f64,
        s,
        "{absmax_bits:#x}"
    );
    for (i, &(b, w)) in vals.iter().enumerate() {
        let y = ref_bf16(w / s) + 0.0;
        let want = ref_e4m3(grid, y.clamp(-448.0, 448.0));
        assert_eq!(codes[i + 1], want, "w {b:#06x} s {sbits:#06x}");
    }
}

#[test]
fn bf16_quotient_path_every_finite_weight() {
    let grid = positive_grid();
    // bf16 max: a row of every finite BF16 value (scale 0x7B12).
    check_bf16_row(&grid, 0x7F7F);
    // A spread of scales: subnormal, eps-producing, the fixtures' edge scales, ordinary ones.
    let mut absmaxes = vec![
        0x0001, 0x0080, 0x00FF, 0x0105, 0x0200, 0x3F80, 0x4396, 0x4400,
    ];
    let mut x: u32 = 12345;
    for _ in 0..120 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        absmaxes.push(((x >> 8) % 0x7F7F) as u16);
    }
    for a in absmaxes {
        check_bf16_row(&grid, a);
    }
}

// ---- F16 / F32 weights follow the formula in their own dtype -------------------------------

fn lcg_values(n: usize, seed: u64, mag: f64) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * mag
        })
        .collect()
}

#[test]
fn f16_and_f32_use_their_own_dtype() {
    let grid = positive_grid();
    let (rows, cols) = (6, 257);
    for (dtype, round, eps) in [
        (DType::F16, ref_f16 as fn(f64) -> f64, 2f64.powi(-10)),
        (DType::F32, |x: f64| x as f32 as f64, 2f64.powi(-23)),
    ] {
        let mut vals = Vec::new();
        for r in 0..rows {
            let mag = [0.02, 1.0, 300.0, 1e-6, 0.0, 6e4][r];
            vals.extend(lcg_values(cols, r as u64 + 7, mag).into_iter().map(round));
        }
        vals[3 * cols + 5] = -0.0;
        let data =
            qforge::numerics::from_f32(dtype, &vals.iter().map(|&v| v as f32).collect::<Vec<_>>())
                .unwrap();
        let (codes, scales) =
            quantize_fp8_channel("w", dtype, &data, rows, cols, Fp8Rounding::Eager).unwrap();
        let scales = to_f32(dtype, &scales).unwrap();
        for r in 0..rows {
            let row = &vals[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let s = match round(amax / 448.0) {
                0.0 => eps,
                s => s,
            };
            assert_eq!(scales[r] as f64, s, "{dtype} row {r}");
            for (j, &w) in row.iter().enumerate() {
                let want = ref_e4m3(&grid, (round(w / s) + 0.0).clamp(-448.0, 448.0));
                assert_eq!(
                    codes[r * cols + j],
                    want,
                    "{dtype} row {r} col {j}: {w} / {s}"
                );
            }
        }
        assert_eq!(
            scales[4] as f64, eps,
            "{dtype}: all-zero row gets finfo eps"
        );
    }
}

#[test]
fn direct_rounding_is_single_rounding_with_the_same_scales() {
    let grid = positive_grid();
    let (rows, cols) = (4, 4096);
    let vals: Vec<f32> = lcg_values(rows * cols, 99, 0.05)
        .into_iter()
        .map(|v| ref_bf16(v) as f32)
        .collect();
    let data = qforge::numerics::from_f32(DType::BF16, &vals).unwrap();
    let (eager, s1) =
        quantize_fp8_channel("w", DType::BF16, &data, rows, cols, Fp8Rounding::Eager).unwrap();
    let (direct, s2) =
        quantize_fp8_channel("w", DType::BF16, &data, rows, cols, Fp8Rounding::Direct).unwrap();
    assert_eq!(s1, s2);
    let scales = to_f32(DType::BF16, &s1).unwrap();
    for (i, &w) in vals.iter().enumerate() {
        let q = (w / scales[i / cols]) as f64 + 0.0;
        assert_eq!(direct[i], ref_e4m3(&grid, q.clamp(-448.0, 448.0)), "{i}");
    }
    let differ = eager.iter().zip(&direct).filter(|(a, b)| a != b).count();
    // fixtures/README.md §3.2: about 3% of the codes differ between the two paths.
    assert!(
        differ > cols * rows / 100 && differ < cols * rows / 10,
        "{differ}"
    );
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn nan_or_inf_names_tensor_and_first_row() {
    let (rows, cols) = (64, 300);
    let mut vals = vec![0.01f32; rows * cols];
    vals[41 * cols + 7] = f32::INFINITY;
    vals[17 * cols + 299] = f32::NAN;
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let data = qforge::numerics::from_f32(dtype, &vals).unwrap();
        let e = quantize_fp8_channel(
            "m.q_proj.weight",
            dtype,
            &data,
            rows,
            cols,
            Fp8Rounding::Eager,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "m.q_proj.weight: row 17 contains NaN or Inf; cannot quantize"
        );
    }
    let data = qforge::numerics::from_f32(DType::BF16, &vals[..cols]).unwrap();
    let mut codes = vec![0u8; cols - 1];
    let mut scales = vec![0u8; 2];
    let e = quantize_fp8_channel_into(
        "x",
        DType::BF16,
        &data,
        1,
        cols,
        Fp8Rounding::Eager,
        &mut codes,
        &mut scales,
    );
    assert!(e.unwrap_err().to_string().contains("output buffers"));
    let e = quantize_fp8_channel("x", DType::BF16, &data, 2, cols, Fp8Rounding::Eager);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("do not make a [2, 300] matrix"));
    let e = quantize_fp8_channel("x", DType::I32, &data[..8], 1, 2, Fp8Rounding::Eager);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("cannot quantize a I32 weight"));
}

// ---- the llm-compressor fixtures, byte for byte ------------------------------------------------

const PROJ: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

fn check_fixture(model: &str) -> usize {
    let dir = common::shared().join("fixtures");
    let src = Checkpoint::open(&dir.join(format!("{model}-bf16"))).unwrap();
    let out = Checkpoint::open(&dir.join(format!("{model}-fp8-dynamic"))).unwrap();
    let mut n = 0;
    for layer in 0..2 {
        for p in PROJ {
            let name = format!("model.layers.{layer}.{p}.weight");
            let t = src.get(&name).unwrap();
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let (codes, scales) =
                quantize_fp8_channel(&name, t.dtype, src.data(t), rows, cols, Fp8Rounding::Eager)
                    .unwrap();
            let want_w = out.get(&name).unwrap();
            let want_s = out
                .get(&format!("model.layers.{layer}.{p}.weight_scale"))
                .unwrap();
            assert_eq!(want_s.shape, vec![rows, 1]);
            assert!(codes == out.data(want_w), "{model} {name}: codes differ");
            assert!(scales == out.data(want_s), "{model} {name}: scales differ");
            n += codes.len();
        }
    }
    n
}

#[test]
fn tiny_fixtures_byte_identical() {
    assert_eq!(check_fixture("tiny-llama3"), 43_008);
    assert_eq!(check_fixture("tiny-tied"), 61_440);
}

#[test]
fn tiny_llama3_edge_rows() {
    let dir = common::shared().join("fixtures/tiny-llama3-bf16");
    let src = Checkpoint::open(&dir).unwrap();
    let q = |name: &str| {
        let t = src.get(&format!("model.layers.{name}.weight")).unwrap();
        let (c, s) = quantize_fp8_channel(
            name,
            t.dtype,
            src.data(t),
            t.shape[0],
            t.shape[1],
            Fp8Rounding::Eager,
        )
        .unwrap();
        (c, s, t.shape[1])
    };
    let scale = |s: &[u8], r: usize| u16::from_le_bytes([s[2 * r], s[2 * r + 1]]);
    // (tensor, row, scale bits) from fixtures/README.md §1.1.
    let cases = [
        ("0.self_attn.q_proj", 5, 0x3c00),
        ("1.mlp.down_proj", 3, 0x3f2b),
        ("0.self_attn.k_proj", 1, 0x3c00),
        ("0.self_attn.v_proj", 0, 0x3a92),
        ("0.self_attn.o_proj", 4, 0x38f2),
        ("1.self_attn.q_proj", 2, 0x3c00),
        ("1.self_attn.k_proj", 0, 0x004b),
        ("1.mlp.up_proj", 1, 0x7b12),
    ];
    for (name, r, sbits) in cases {
        let (c, s, cols) = q(name);
        assert_eq!(scale(&s, r), sbits, "{name} row {r}");
        let row = &c[r * cols..(r + 1) * cols];
        match name {
            "0.self_attn.q_proj" | "0.self_attn.k_proj" => assert!(row.iter().all(|&b| b == 0)),
            "1.mlp.down_proj" => {
                assert_eq!(row[7], 0x7E);
                assert_eq!(row.iter().filter(|&&b| b == 0x80).count(), 5);
            }
            "0.self_attn.v_proj" => {
                assert_eq!(row[3], 0xFE);
                assert!(row.iter().enumerate().all(|(j, &b)| j == 3 || b == 0));
            }
            "0.self_attn.o_proj" => assert_eq!(&row[..4], &[0, 0, 0, 0]),
            "1.self_attn.q_proj" => {
                assert_eq!(row.iter().filter(|&&b| b == 0x00).count(), 16);
                assert_eq!(row.iter().filter(|&&b| b == 0x80).count(), 16);
            }
            "1.self_attn.k_proj" => {
                let vals: Vec<f32> = row.iter().map(|&b| e4m3_to_f32(b)).collect();
                assert!(vals.contains(&-448.0) && vals.contains(&256.0), "{vals:?}");
            }
            _ => {
                assert_eq!(row[0], 0x7E);
                assert!(row[1..].iter().all(|&b| b == 0 || b == 0x80));
            }
        }
    }
}

#[test]
fn to_f32_decodes_each_dtype() {
    assert_eq!(
        to_f32(DType::BF16, &[0x80, 0x3f, 0x00, 0x80]).unwrap(),
        [1.0, -0.0]
    );
    assert_eq!(
        to_f32(DType::F16, &[0x00, 0x3c, 0x00, 0xc0]).unwrap(),
        [1.0, -2.0]
    );
    assert_eq!(to_f32(DType::F32, &1.5f32.to_le_bytes()).unwrap(), [1.5]);
    assert_eq!(
        to_f32(DType::F8_E4M3, &[0x7E, 0x81]).unwrap(),
        [448.0, -(2f32.powi(-9))]
    );
    assert!(to_f32(DType::BF16, &[1, 2, 3]).is_err());
    assert!(to_f32(DType::I64, &[0; 8]).is_err());
}

/// Throughput on a 1 GiB BF16 weight, 1 thread vs the default pool (both results must agree).
/// `cargo test --release --test quant_fp8 -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_one_gib_bf16() {
    let (rows, cols) = (16384, 32768);
    let mut data = vec![0u8; rows * cols * 2];
    let mut x: u32 = 1;
    for c in data.chunks_exact_mut(2) {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        // Random sign/mantissa, exponents around 2^-6 (weights ~0.02).
        let bits = ((x >> 16) as u16 & 0x807F) | 0x3C00;
        c.copy_from_slice(&bits.to_le_bytes());
    }
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t0 = std::time::Instant::now();
        let (out, cpu) = pool.install(|| {
            let c0 = thread_cpu_ns();
            let out = quantize_fp8_channel("w", DType::BF16, &data, rows, cols, Fp8Rounding::Eager)
                .unwrap();
            (out, thread_cpu_ns() - c0)
        });
        if threads == 1 {
            eprintln!(
                "1 thread: {:.2} ns CPU per element",
                cpu as f64 / (rows * cols) as f64
            );
        }
        (out, t0.elapsed().as_secs_f64())
    };
    let (one, t1) = run(1);
    let (two, t2) = run(2);
    assert!(one == two);
    let gib = (rows * cols * 2) as f64 / (1u64 << 30) as f64;
    eprintln!(
        "1 thread: {t1:.2} s ({:.2} GiB/s); 2 threads: {t2:.2} s ({:.2} GiB/s)",
        gib / t1,
        gib / t2
    );
}

/// CPU time of the calling thread in ns (Linux schedstat), to measure work on a busy machine.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}
