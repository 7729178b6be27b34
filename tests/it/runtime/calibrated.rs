//! Calibrated outputs (llm-compressor's own, fixtures/calibration) on the CPU runtime: static
//! FP8 input scales and the FP8 KV cache as vLLM applies them (g128-fp8_static_kv), and AWQ's
//! asymmetric int4 with zero points (g128-awq_w4a16_asym). The expected values are printed by
//! `calibrated_ref.py` next to this file, which computes them in torch from vLLM's and
//! compressed-tensors' definitions, not with qforge.

use crate::support::{copy_model, fixture, rewrite_tensors};
use qforge::runtime::cpu::linear::run_linear;
use qforge::runtime::cpu::{load_cpu, CpuModel};
use qforge::runtime::weights::{Dense, LinearWeight};
use qforge::runtime::Backend;
use std::collections::HashMap;
use std::path::Path;

const FP8_STATIC: &str = "calibration/g128-fp8_static_kv";

/// The two input rows of the reference: `(i·37 mod 101 − 50) / 16`, and 4× that (which
/// saturates at ±448 after the static scale).
fn rows(k: usize) -> Vec<f32> {
    let r: Vec<f32> = (0..k)
        .map(|i| ((i * 37) % 101) as f32 / 16.0 - 50.0 / 16.0)
        .collect();
    r.iter().copied().chain(r.iter().map(|v| v * 4.0)).collect()
}

/// The fixture with layer 1's MLP tensors replaced by layer 0's: the source model's bf16-max
/// outlier row in layer 1's up_proj gives it a 7.6e35 weight scale and down_proj an infinite
/// input scale (fixtures/schemes B8), which the runtime refuses
/// ([`the_fixture_as_written_is_refused_naming_the_infinite_scale`]).
fn finite_copy(dir: &Path) -> CpuModel {
    let src = fixture(FP8_STATIC);
    let ck = qforge::checkpoint::Checkpoint::open(&src).unwrap();
    let layer0: HashMap<String, Vec<u8>> = ck
        .tensors()
        .iter()
        .filter(|t| t.name.starts_with("model.layers.0.mlp."))
        .map(|t| (t.name.clone(), ck.data(t).to_vec()))
        .collect();
    drop(ck);
    copy_model(&src, dir);
    rewrite_tensors(dir, |t, data| {
        let data = match t.name.strip_prefix("model.layers.1.mlp.") {
            Some(rest) => layer0[&format!("model.layers.0.mlp.{rest}")].clone(),
            None => data,
        };
        Some((t, data))
    });
    load_cpu(dir).unwrap()
}

/// Per Linear: per row, the first six outputs (f32 values, written exactly as f64) and the
/// exact sum of all (math.fsum).
type Expected = (&'static str, [[f64; 6]; 2], [f64; 2]);
const LINEARS: [Expected; 4] = [
    (
        "model.layers.0.self_attn.q_proj",
        [
            [
                -0.010201806202530861,
                1.3215382099151611,
                0.19238682091236115,
                -0.6351862549781799,
                -0.7143843770027161,
                0.0,
            ],
            [
                0.058033522218465805,
                2.652644157409668,
                0.8963525295257568,
                -0.9211037755012512,
                -1.4261945486068726,
                0.0,
            ],
        ],
        [4.772065396420658, 20.101137715857476],
    ),
    (
        "model.layers.0.self_attn.v_proj",
        [
            [
                1.1773834228515625,
                0.4678959250450134,
                -0.7593756318092346,
                0.13017761707305908,
                0.9267449378967285,
                -0.11032066494226456,
            ],
            [
                2.0604209899902344,
                0.9064773321151733,
                -1.3853284120559692,
                0.01677459292113781,
                1.6622246503829956,
                0.17438800632953644,
            ],
        ],
        [5.556631129235029, 11.256813042797148],
    ),
    (
        "model.layers.0.mlp.up_proj",
        [
            [
                -0.5263442397117615,
                0.6200882792472839,
                0.3225761950016022,
                0.6635748147964478,
                -0.32410481572151184,
                -0.27055466175079346,
            ],
            [
                -0.8061994910240173,
                1.7380706071853638,
                0.9289059042930603,
                1.3759784698486328,
                -0.7132949233055115,
                0.0265793576836586,
            ],
        ],
        [0.3703923135763034, 0.9356110952794552],
    ),
    (
        "model.layers.0.mlp.down_proj",
        [
            [
                0.12555257976055145,
                0.10390333086252213,
                0.16137433052062988,
                -0.09514614194631577,
                -0.24506674706935883,
                -0.0009440782014280558,
            ],
            [
                0.16903342306613922,
                0.1167825311422348,
                0.17395785450935364,
                -0.10541321337223053,
                -0.2992333769798279,
                0.021669182926416397,
            ],
        ],
        [3.0838837093906477, 3.9129178505390882],
    ),
];

/// q/k/v share the max of their weight scales (v's, 5.6× q's: q and k are requantized) and of
/// their input scales; gate/up likewise; down_proj keeps its own. Outputs bit for bit.
#[test]
fn static_fp8_linears_match_vllm_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let m = finite_copy(dir.path());
    for (name, first, sums) in LINEARS {
        let lin = m.linear(name).unwrap();
        assert!(lin.is_fp8() && lin.input_scale.is_some(), "{name}");
        let out = run_linear(lin, &rows(lin.cols)).unwrap();
        for r in 0..2 {
            let y = &out.y[r * lin.rows..(r + 1) * lin.rows];
            for (j, &want) in first[r].iter().enumerate() {
                assert_eq!(y[j] as f64, want, "{name} row {r} output {j}");
            }
            let sum: f64 = y.iter().map(|&v| v as f64).sum();
            assert!(
                (sum - sums[r]).abs() < 1e-9,
                "{name} row {r}: sum {sum} vs {}",
                sums[r]
            );
        }
    }
    // The fused scales: the max over q/k/v (v_proj's weight scale, the shared input scale).
    let q = m.linear("model.layers.0.self_attn.q_proj").unwrap();
    let LinearWeight::Fp8 { scales, .. } = &q.weight else {
        panic!("q_proj not FP8")
    };
    assert_eq!(
        (scales[0] as f64, q.input_scale.map(f64::from)),
        (0.0011138916015625, Some(0.00921630859375))
    );
}

/// The whole model on 8 ids, with the FP8 KV cache: the reference's logits to 2e-3 (its f32
/// rounding order differs), while the same reference with a 32-bit KV cache differs by 0.0114:
/// the test tells the two apart.
#[test]
fn static_fp8_model_with_fp8_kv_cache_matches_the_vllm_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = finite_copy(dir.path());
    assert!(m.weights.layers.iter().all(|l| l.kv_scales.is_some()));
    let ids = [1, 17, 300, 42, 99, 7, 256, 3];
    let logits = m.forward(&ids, 0, true).unwrap();
    let v = m.vocab_size();
    let argmax: Vec<usize> = logits
        .chunks_exact(v)
        .map(|r| (0..v).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
        .collect();
    assert_eq!(argmax, [124, 85, 124, 85, 85, 85, 85, 85]);
    let want_last = [
        -0.1949550211429596,
        -0.2806684970855713,
        0.12359414249658585,
        -0.13728652894496918,
        -0.02715124934911728,
        0.10335840284824371,
        0.026883352547883987,
        0.3456260561943054,
    ];
    let last = &logits[7 * v..7 * v + 8];
    for (j, (&a, &b)) in last.iter().zip(&want_last).enumerate() {
        assert!(
            (a as f64 - b).abs() < 2e-3,
            "last row logit {j}: {a} vs {b}"
        );
    }
    let want_sums = [
        3.267754083906766,
        4.2832465915125795,
        4.351268520360463,
        4.415128894441295,
        4.440373071978684,
        4.618112400399696,
        4.63312417146517,
        4.709941337845521,
    ];
    for (r, (row, want)) in logits.chunks_exact(v).zip(want_sums).enumerate() {
        let sum: f64 = row.iter().map(|&x| x as f64).sum();
        assert!(
            (sum - want).abs() < 2e-2,
            "row {r}: logit sum {sum} vs {want}"
        );
    }
}

/// llm-compressor wrote an infinite `input_scale` for layer 1's down_proj (vLLM would run it
/// and produce NaN); the runtime refuses the checkpoint and names the tensor.
#[test]
fn the_fixture_as_written_is_refused_naming_the_infinite_scale() {
    let e = load_cpu(&fixture(FP8_STATIC)).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.mlp.down_proj.input_scale") && e.contains("inf"),
        "{e}"
    );
}

/// AWQ W4A16_ASYM: `(q − zp) · s` rounded to BF16, checked over whole matrices by a checksum
/// `Σ (i+1) · bits[i] mod 2^64` of the BF16 bit patterns, row-major.
#[test]
fn awq_asymmetric_int4_loads_with_zero_points() {
    let m = load_cpu(&fixture("calibration/g128-awq_w4a16_asym")).unwrap();
    let want = [
        (
            "model.layers.0.mlp.down_proj",
            33093931138034u64,
            [
                -0.006195068359375f64,
                0.0247802734375,
                -0.006195068359375,
                0.0185546875,
            ],
        ),
        (
            "model.layers.1.mlp.up_proj",
            33254376093051,
            [
                -0.0152587890625,
                0.02294921875,
                -0.0380859375,
                0.00762939453125,
            ],
        ),
    ];
    for (name, sum, first) in want {
        let lin = m.linear(name).unwrap();
        let LinearWeight::Dense(Dense::Bf16(bits)) = &lin.weight else {
            panic!("{name}: not dequantized to BF16")
        };
        let got = bits.iter().enumerate().fold(0u64, |a, (i, &b)| {
            a.wrapping_add((i as u64 + 1).wrapping_mul(b as u64))
        });
        assert_eq!(got, sum, "{name}");
        let row0: Vec<f64> = (0..4)
            .map(|c| lin.weight.value(0, c, lin.cols) as f64)
            .collect();
        assert_eq!(row0, first, "{name}");
    }
    let mut m = m;
    let logits = m.forward(&[1, 2, 3], 0, false).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

/// Static INT8 inputs (vLLM's `static_scaled_int8_quant_kernel`: `sat_i8(rne(x / s))`) on a
/// hand-made Linear, worked out by hand: with `s = 0.125`, x/s = 2.5 (a tie: 2), −0.5 (−0),
/// 160 (saturates at 127), 1.5 (a tie: 2); Σ q·w = 1·2 + 2·0 + 3·127 + 4·2 = 391, and
/// y = 0.125 · (0.5 · 391) = 24.4375.
#[test]
fn static_int8_inputs_round_half_even_and_saturate() {
    let lin = qforge::runtime::weights::Linear {
        name: "hand".into(),
        rows: 1,
        cols: 4,
        weight: LinearWeight::Int8 {
            codes: vec![1, 2, 3, 4],
            scales: vec![0.5],
        },
        bias: None,
        input_scale: Some(0.125),
    };
    let out = run_linear(&lin, &[0.3125, -0.0625, 20.0, 0.1875]).unwrap();
    assert_eq!(out.x_q, [2.0, 0.0, 127.0, 2.0]);
    assert_eq!((out.x_scale, out.y), (vec![0.125], vec![24.4375]));
}
