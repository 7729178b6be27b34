//! Every quantized Linear of both tiny FP8 checkpoints against the W8A8 linear goldens
//! (fixtures/README.md §6.3): activation scales, activation codes and outputs bit for bit,
//! through the same code path as the forward pass. The goldens include all-zero rows (minimum
//! scale), exact E4M3 rounding ties, signed zeros, values below the minimum scale, and the ±inf
//! outputs of `layers.1.mlp.up_proj` that pin the `s_a · (s_w · acc)` order.

use crate::support::{fixture, golden};
use qforge::runtime::cpu::linear::run_linear;
use qforge::runtime::cpu::load_cpu;

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn check_model(checkpoint: &str) {
    let g = golden(&format!("{checkpoint}.w8a8-linear.safetensors"));
    let m = load_cpu(&fixture(checkpoint)).unwrap();
    let mut prefixes: Vec<&str> = g.keys().filter_map(|k| k.strip_suffix(".x")).collect();
    prefixes.sort();
    assert_eq!(
        prefixes.len(),
        14,
        "{checkpoint}: 7 quantized Linears × 2 layers"
    );
    let mut infinite = 0;
    for p in prefixes {
        let lin = m
            .linear(p)
            .unwrap_or_else(|| panic!("{checkpoint}: no Linear {p}"));
        assert!(lin.is_fp8(), "{p} should be FP8");
        let x = &g[&format!("{p}.x")];
        assert_eq!(x.shape, [6, lin.cols], "{p}");
        let out = run_linear(lin, &x.f32).unwrap();

        let want_s = &g[&format!("{p}.x_scale")].f32;
        for (r, (a, b)) in out.x_scale.iter().zip(want_s).enumerate() {
            assert!(same_bits(*a, *b), "{p}: x_scale[{r}] {a:e} vs {b:e}");
        }
        let want_q = &g[&format!("{p}.x_q")].f32;
        for (i, (a, b)) in out.x_q.iter().zip(want_q).enumerate() {
            assert!(a == b, "{p}: x_q[{i}] {a} vs {b}"); // value only: 0x80 and 0x00 agree
        }
        let want_y = &g[&format!("{p}.y")].f32;
        assert_eq!(out.y.len(), want_y.len(), "{p}");
        for (i, (a, b)) in out.y.iter().zip(want_y).enumerate() {
            assert!(same_bits(*a, *b), "{p}: y[{i}] {a:e} vs {b:e}");
        }
        infinite += want_y.iter().filter(|v| v.is_infinite()).count();
    }
    assert!(
        infinite > 0,
        "{checkpoint}: the goldens' ±inf outputs were compared"
    );
}

#[test]
fn tiny_llama3_linears_bit_exact() {
    check_model("tiny-llama3-fp8-dynamic");
}

#[test]
fn tiny_tied_linears_bit_exact() {
    check_model("tiny-tied-fp8-dynamic");
}

/// The same inputs through the BF16 checkpoint's dense Linear land far from the W8A8 output:
/// the golden comparison above can tell W8A8 from dequantized-weight arithmetic.
#[test]
fn dense_linear_is_not_w8a8() {
    let g = golden("tiny-llama3-fp8-dynamic.w8a8-linear.safetensors");
    let m = load_cpu(&fixture("tiny-llama3-bf16")).unwrap();
    let p = "model.layers.0.mlp.gate_proj";
    let lin = m.linear(p).unwrap();
    assert!(!lin.is_fp8());
    let out = run_linear(lin, &g[&format!("{p}.x")].f32).unwrap();
    assert!(out.x_scale.is_empty() && out.x_q.is_empty());
    let want = &g[&format!("{p}.y")].f32;
    let differ = out.y.iter().zip(want).filter(|(a, b)| a != b).count();
    assert!(
        differ > want.len() / 2,
        "only {differ} of {} differ",
        want.len()
    );
}
