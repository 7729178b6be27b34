//! The binary's CUDA paths on the CUDA emulator (QFORGE_CUDA_EMULATE=1 in the child only):
//! `verify --device cuda`, `bench --device cuda`, and `gpu selftest` — what a GPU machine
//! runs, end to end, on a machine without one. Ignored without a C++ compiler unless
//! QFORGE_REQUIRE_EMU is set (CI sets it).

use crate::support;
use crate::support::requires;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// `qforge args…` with the emulator standing in for the GPU.
fn qforge_emulated(args: &[&str]) -> Output {
    qforge_emulated_env(args, &[])
}

fn qforge_emulated_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    support::qforge()
        .args(args)
        .env("QFORGE_CUDA_EMULATE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run qforge")
}

fn ok_json(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qforge failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn bundled() -> String {
    support::bundled_model().to_string_lossy().into_owned()
}

fn verify(model: &Path, device: &str) -> Value {
    verify_env(model, device, &[])
}

fn verify_env(model: &Path, device: &str, env: &[(&str, &str)]) -> Value {
    let model = model.to_string_lossy();
    let reference = bundled();
    ok_json(&qforge_emulated_env(
        &[
            "verify",
            "--model",
            &model,
            "--reference",
            &reference,
            "--prompt",
            "What is the capital of France?",
            "--max-new-tokens",
            "12",
            "--device",
            device,
            "--min-agreement",
            "0",
            "--json",
        ],
        env,
    ))
}

/// The README's job with `--device cuda`: the bundled model quantized to FP8_DYNAMIC,
/// generated on the emulated GPU, gives the CPU's tokens and full agreement with the BF16
/// original.
#[requires(emulator)]
#[test]
fn verify_on_cuda_gives_the_cpu_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let q = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let (cuda, cpu) = (verify(&q, "cuda"), verify(&q, "cpu"));
    let device = cuda["device"].as_str().unwrap_or_default();
    assert!(device.contains("CUDA emulator"), "{device}");
    let ids = |v: &Value| v["generation"]["token_ids"].clone();
    assert_eq!(ids(&cuda).as_array().map(Vec::len), Some(12));
    assert_eq!(ids(&cuda), ids(&cpu));
    for v in [&cuda, &cpu] {
        assert_eq!(v["reference"]["agreement"]["top1_agreement"], 1.0, "{v}");
        assert_eq!(v["reference"]["agreement"]["nonfinite_positions"], 0);
    }
    // The kernels do not depend on the order threads run between barriers (a missing
    // barrier would): last-to-first gives bit-identical logits, so the same KL and ppl.
    let reversed = verify_env(&q, "cuda", &[("QFORGE_EMU_REVERSE", "1")]);
    assert_eq!(ids(&reversed), ids(&cuda));
    assert_eq!(
        reversed["reference"]["agreement"],
        cuda["reference"]["agreement"]
    );
}

/// `QFORGE_GEMV` names the GEMV build decode runs (instead of timing them at load): the
/// device line says which, and it generates the default build's tokens; a name that is no
/// build is refused in one line.
#[requires(emulator)]
#[test]
fn verify_on_cuda_runs_the_gemv_build_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let q = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let ids = |v: &Value| v["generation"]["token_ids"].clone();
    let default = verify(&q, "cuda");
    let other = verify_env(&q, "cuda", &[("QFORGE_GEMV", "8x2")]);
    let device = other["device"].as_str().unwrap_or_default();
    assert!(device.contains("gemv 8 warps x 2 chunks"), "{device}");
    assert_eq!(ids(&other), ids(&default));
    let model = q.to_string_lossy();
    let out = qforge_emulated_env(
        &[
            "verify", "--model", &model, "--prompt", "Hi", "--device", "cuda",
        ],
        &[("QFORGE_GEMV", "16x1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("QFORGE_GEMV=16x1") && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// `verify --device cuda` runs the other presets too (streamed through the CPU loader and
/// uploaded as BF16: weight-only, where the CPU quantizes W8A8's and FP8_BLOCK's
/// activations), with finite logits and the agreement of its own semantics; the numerics
/// are checked in-process in `tests/cuda_runtime.rs`. FP8_BLOCK's block scales were once
/// taken for per-channel ones here (KL 49.7).
#[requires(emulator)]
#[test]
fn verify_on_cuda_loads_the_other_presets() {
    let tmp = tempfile::tempdir().unwrap();
    for preset in ["w8a8", "fp8_block", "nvfp4a16"] {
        let q = support::quantize_bundled(tmp.path(), preset);
        let cuda = verify(&q, "cuda");
        let a = &cuda["reference"]["agreement"];
        assert_eq!(a["nonfinite_positions"], 0, "{preset}: {a}");
        let kl = a["kl_mean"].as_f64().unwrap();
        assert!(kl < 1.0, "{preset}: KL {kl}");
        assert!(
            a["top1_agreement"].as_f64().unwrap() >= 0.5,
            "{preset}: {a}"
        );
    }
}

/// `bench --device cuda --synthetic`: a random FP8 model built in (emulated) GPU memory
/// runs the profiles with consistent timings.
#[requires(emulator)]
#[test]
fn bench_on_cuda_runs_the_profiles() {
    let config = format!("{}/config.json", bundled());
    let r = ok_json(&qforge_emulated(&[
        "bench",
        "--device",
        "cuda",
        "--synthetic",
        &config,
        "--profiles",
        "16/4,40/2",
        "--json",
    ]));
    assert!(
        r["device"].as_str().unwrap().contains("CUDA emulator"),
        "{r}"
    );
    let rows = r["profiles"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, (p, g)) in rows.iter().zip([(16, 4), (40, 2)]) {
        assert_eq!(row["prompt_tokens"], p);
        assert_eq!(row["generated_tokens"], g);
        let (lat, ttft) = (row["latency_s"].as_f64(), row["ttft_s"].as_f64());
        assert!(ttft.unwrap() > 0.0 && lat.unwrap() > ttft.unwrap(), "{row}");
    }
    assert!(r["bandwidth_source"]
        .as_str()
        .unwrap()
        .contains("256 MiB copy"));
}

/// `bench --synthetic-scheme`: W8A8 and the packed weight-only models built in (emulated) GPU
/// memory run, at their quantized size (weight bytes per token: codes + scales, the BF16 lm_head); FP8_BLOCK
/// refuses the bundled shape's 48 columns in one line.
#[requires(emulator)]
#[test]
fn bench_on_cuda_builds_each_synthetic_scheme() {
    let config = format!("{}/config.json", bundled());
    let run = |scheme: &str| {
        qforge_emulated(&[
            "bench",
            "--device",
            "cuda",
            "--synthetic",
            &config,
            "--synthetic-scheme",
            scheme,
            "--profiles",
            "8/2",
            "--json",
        ])
    };
    // The bundled shape: hidden 48, intermediate 128, q 48, kv 16, 2 layers, tied 49152 vocab.
    let linears = [(48 + 32, 48), (48, 48), (256, 48), (48, 128)];
    let lm_head = 49152 * 48 * 2;
    let int8: usize = linears.iter().map(|&(n, k)| n * k + 4 * n).sum();
    // Packed weight-only: rows padded to 128 columns, `bits` per weight, per group an f32
    // scale (and an f32 offset, asymmetric) or FP4's scale byte, whose Linears also have a
    // table of the 256 byte values and a u32 table offset per row.
    let packed = |bits: usize, group: usize, per_group: usize| -> usize {
        linears
            .iter()
            .map(|&(n, k): &(usize, usize)| {
                let padded = k.next_multiple_of(128);
                let tables = if per_group == 1 { 256 * 4 + 4 * n } else { 0 };
                n * padded * bits / 8 + per_group * n * padded.div_ceil(group) + tables
            })
            .sum()
    };
    for (scheme, name, per_layer) in [
        ("w8a8", "W8A8", int8),
        ("w4a16", "W4A16", packed(4, 128, 4)),
        ("w4a16_asym", "W4A16_ASYM", packed(4, 128, 8)),
        ("w8a16", "W8A16", packed(8, 128, 4)),
        ("nvfp4a16", "NVFP4A16", packed(4, 16, 1)),
        ("mxfp4a16", "MXFP4A16", packed(4, 32, 1)),
    ] {
        let r = ok_json(&run(scheme));
        assert!(
            r["model"]
                .as_str()
                .unwrap()
                .contains(&format!("random {name}")),
            "{r}"
        );
        assert_eq!(
            r["weight_bytes_per_token"],
            2 * per_layer + lm_head,
            "{scheme}"
        );
        assert!(r["profiles"][0]["latency_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let out = run("fp8_block");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("multiples of 128, not 48") && err.lines().count() == 1,
        "{err}"
    );
}

/// `qforge gpu selftest` (what scripts/gpu_check.sh runs first) passes every check on the
/// emulator: FP8 conversions, the W8A8 Linear goldens through the GEMV kernel, and the four
/// tiny fixtures against the CPU (the random-1B stage is skipped: too slow emulated).
#[requires(emulator)]
#[test]
fn gpu_selftest_passes() {
    let fixtures = support::shared().join("fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("selftest.json");
    let out = qforge_emulated(&[
        "gpu",
        "selftest",
        "--fixtures",
        fixtures.to_str().unwrap(),
        "--steps",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    let rows: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let text = rows.to_string();
    let passed = text.matches("\"pass\":true").count();
    assert!(passed >= 30, "{passed} passing checks: {text}");
    for stage in ["fp8-convert", "linear-golden", "tiny-tied-bf16"] {
        assert!(text.contains(stage), "stage {stage} missing");
    }
}
