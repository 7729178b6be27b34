//! `scripts/gpu_check.sh` — the one script a session with a GPU runs — end to end on the CUDA
//! emulator in its smoke mode (tiny shapes, no nvidia-smi or PyTorch): every stage runs and
//! `gpu_report.py` turns their JSON into the report pasted into docs/gpu-results.md. Ignored
//! without a C++ compiler or python3, unless QFORGE_REQUIRE_EMU is set (CI sets it). Each
//! stage has a wall-clock limit, so these run here, alone, not beside the emulator tests of
//! `it` (which made the emulator's compile in `info-cold` overrun its 40 s).

use crate::alone;
use crate::support;
use crate::support::requires;

use std::process::Command;

/// `scripts/gpu_check.sh ARGS` in smoke mode on the emulator, `OUT` and the work folder
/// given, only the stages `only` names (all when empty).
fn smoke_check(
    args: &[&std::path::Path],
    (out, work): (&std::path::Path, &std::path::Path),
    only: &str,
) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu_check.sh"))
        .args(args)
        .env("QFORGE_CUDA_EMULATE", "1")
        .env("QFORGE_GPU_CHECK_SMOKE", "1")
        .env("QFORGE_GPU_CHECK_ONLY", only)
        .env("QFORGE_BIN", env!("CARGO_BIN_EXE_qforge"))
        .env("OUT", out)
        .env("QFORGE_GPU_CHECK_DIR", work)
        .output()
        .unwrap()
}

#[requires(emulator, python3)]
#[test]
fn gpu_check_runs_every_stage_and_writes_the_report() {
    let _alone = alone();
    // `OUT` gets only what a device call brings back (8 files at most); the rest stays in
    // the work folder.
    let (out, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The fixtures as scripts/gpu_stage.sh stages them for a device call (the subset that
    // fits its 64 MiB): the selftest below must find everything it reads there.
    let stage = tempfile::tempdir().unwrap();
    let staged = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu_stage.sh"))
        .arg(support::shared().join("fixtures"))
        .arg(stage.path())
        .env("QFORGE_BIN", env!("CARGO_BIN_EXE_qforge"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&staged.stdout);
    assert!(
        staged.status.success(),
        "gpu_stage.sh: {said}{}",
        String::from_utf8_lossy(&staged.stderr)
    );
    assert!(said.contains("of the 64 MiB a call sends"), "{said}");
    let run = smoke_check(
        &[&stage.path().join("fixtures")],
        (out.path(), work.path()),
        "",
    );
    let log = String::from_utf8_lossy(&run.stdout);
    for stage in [
        "env",
        "selftest",
        "bench",
        "gemm",
        "profiles-config",
        "profiles-w4a16",
        "report",
    ] {
        assert!(
            log.contains(&format!("-- {stage}: exit 0")),
            "{stage}:\n{log}"
        );
    }
    assert!(run.status.success(), "{log}");
    assert!(log.contains("gpu_check: all stages passed"), "{log}");
    let mut back: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    back.sort();
    assert_eq!(back, ["gpu-check-logs.tar.gz", "report.md"]);
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(out.path().join("gpu-check-logs.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in ["./selftest.json", "./bench.log", "./profiles-config.json"] {
        assert!(listing.lines().any(|l| l == file), "{file}:\n{listing}");
    }
    assert!(!listing.contains("kernel-cache"), "{listing}");
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("qforge CUDA emulator"), "{report}");
    assert!(report.contains("- emulator: "), "{report}");
    assert!(report.contains("checks pass"), "{report}");
    // The issues' targets, summed up; the emulator's speeds are not judged.
    let targets = report.split("**Targets**").nth(1).expect("a Targets table");
    let row = |what: &str| {
        targets
            .lines()
            .find(|l| l.starts_with(&format!("| {what}")))
    };
    let cuda = row("CUDA vs CPU (gpu selftest) |").expect("selftest row");
    assert!(cuda.ends_with("checks pass | PASS |"), "{cuda}");
    let decode = row("decode >= 80 % of HBM roofline, tiny-d64.json |").expect("decode row");
    assert!(decode.ends_with("| n/a |"), "{decode}");
    assert!(
        row("prefill GEMM >= 95 % of torch._scaled_mm").is_some(),
        "{targets}"
    );
    assert!(
        row("seed profiles faster than 2xH100, config |").is_some(),
        "{targets}"
    );
    assert!(!report.contains("| FAIL |"), "{report}");
    assert!(report.contains("| linear-golden |") && report.contains("| tiny-tied-bf16 |"));
    assert!(
        report.contains("| unaligned-MXFP4A16 | gemv outputs unlike gemv_bf16's | 0.000e0 |"),
        "{report}"
    );
    // gemv-sweep: a tuning build of gemv.cu timed beside the default one, its outputs checked.
    assert!(
        report.contains("| gemv-sweep | small 64x1024, m 1, fp8, 8 warps x 2 chunks: outputs > 1 bf16 ulp off the default's | 0.000e0 | <= 0.0e0 | PASS |"),
        "{report}"
    );
    // Beside it, the same bytes read as INT8 codes (native mma on Hopper).
    assert!(
        report.contains(
            "| gemv-sweep | small 64x1024, m 1, int8 codes, 4 warps x 4 chunks (default) | "
        ),
        "{report}"
    );
    assert!(report.contains("tiny-d64.json | "), "model row:\n{report}");
    assert!(
        report.contains("| 2/1 heads x 64 | 32 | "),
        "attention row:\n{report}"
    );
    // The decode step by kernel: each of an FP8 decode step's kernels, alone.
    for kernel in [
        "embed_gather",
        "add_rmsnorm",
        "gemv_fp8",
        "rope_qkv",
        "attention",
        "quant_rows",
        "silu_mul",
        "gemv_bf16",
        "argmax_rows",
    ] {
        let row = format!("tiny-d64.json | {kernel} | ");
        assert!(report.contains(&row), "{row}:\n{report}");
    }
    assert!(report.contains("| (sum; the whole step is "), "{report}");
    // The decode step under a tuning build of gemv.cu, beside the build in use (on the
    // emulator, the default build: no timing picks one there).
    assert!(
        report.contains("tiny-d64.json | 4 warps x 4 chunks (in use, default) | ")
            && report.contains("tiny-d64.json | 8 warps x 2 chunks | "),
        "{report}"
    );
    for shape in ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] {
        for m in [1, 16, 32] {
            let row = format!("| {shape} | {m} | n/a | ");
            assert!(report.contains(&row), "{row}:\n{report}");
        }
    }
    assert!(report.contains("**qforge bench --synthetic"), "{report}");
    assert!(
        report.contains("16/4") && report.contains("24/2"),
        "{report}"
    );
    assert!(
        report.contains("--synthetic-scheme w4a16 --profiles 8/2**")
            && report.contains("random W4A16"),
        "{report}"
    );
}

/// `gpu_report.py` judges the issues' targets from the stages' JSON as a real GPU run leaves
/// it: each verdict on both sides of its limit.
#[requires(python3)]
#[test]
fn report_judges_the_targets() {
    let _alone = alone();
    use serde_json::{json, Value};
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, v: Value| std::fs::write(dir.path().join(name), v.to_string()).unwrap();
    let report = || {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu_report.py");
        let run = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&run.stdout).into_owned();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{text}{err}");
        text
    };
    let gpu = json!({"stage": "info", "check": "gpu", "value": "NVIDIA H200", "pass": null});
    put("info.json", json!({ "rows": [gpu] }));
    let row =
        |pass: bool| json!({"stage": "s", "check": "c", "value": "0", "limit": "0", "pass": pass});
    put(
        "selftest.json",
        json!({"rows": [row(true), row(true), row(false)]}),
    );
    let model = |shape: &str, pct: f64| {
        json!({"kind": "model", "shape": shape, "prefill_tokens": 2048, "prefill_tok_s": 9e3,
            "decode_tok_s": 50.0, "decode_ms": 20.0, "weight_bytes_per_token": 7e10,
            "decode_GBps": 3530.0, "peak_GBps": 4800.0, "copy_GBps": 4300.0,
            "pct_roofline": pct, "fp8_path": "cublaslt-scaled", "cuda_graph": true,
            "decode_ms_without_graph": 25.0, "pdl": true, "decode_ms_without_pdl": 21.0})
    };
    let models = [model("llama-8b", 81.2), model("llama-70b", 73.5)];
    put("bench.json", json!({ "records": models }));
    let gemm = |m: u32, us: f64| json!({"kind": "gemm", "shape": "o_proj", "M": m, "path": "cublaslt-scaled", "us": us});
    let ours = [gemm(16, 50.0), gemm(128, 10.0), gemm(2048, 100.0)];
    put("gemm.json", json!({ "records": ours }));
    let torch = |m: u32, us: f64| json!({"shape": "o_proj", "M": m, "us": us});
    let theirs = [torch(16, 5.0), torch(128, 9.8), torch(2048, 96.0)];
    put("torch_gemm.json", json!({ "records": theirs }));
    let card = [2.7, 5.3, 2.7, 2.8, 21.1, 21.4, 11.5, 47.2];
    let profiles = |slower: Option<usize>| {
        let rows: Vec<Value> = (card.iter().enumerate())
            .map(|(i, &s)| {
                let t = if Some(i) == slower { s * 1.1 } else { s * 0.9 };
                json!({"profile": format!("p{i}"), "latency_s": t, "seed_latency_s": s})
            })
            .collect();
        json!({ "profiles": rows })
    };
    put("profiles-llama-70b.json", profiles(Some(7)));
    put("profiles-fast.json", profiles(None));
    let text = report();
    for want in [
        "| CUDA vs CPU (gpu selftest) | 2/3 checks pass | FAIL |",
        "| decode >= 80 % of HBM roofline, llama-8b | 81.2 % (20.00 ms/token) | PASS |",
        "| decode >= 80 % of HBM roofline, llama-70b | 73.5 % (20.00 ms/token) | FAIL |",
        "| prefill GEMM >= 95 % of torch._scaled_mm (M >= 128), worst of 2 | 0.96 (o_proj, M 2048) | PASS |",
        "| seed profiles faster than 2xH100, llama-70b | 7/8 (closest: p7 51.92 s vs 47.2 s) | FAIL |",
        "| seed profiles faster than 2xH100, fast | 8/8 (closest: p0 2.43 s vs 2.7 s) | PASS |",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    put(
        "torch_gemm.json",
        json!({"records": [torch(128, 9.8), torch(2048, 90.0)]}),
    );
    let text = report();
    let want = "| prefill GEMM >= 95 % of torch._scaled_mm (M >= 128), worst of 2 | 0.90 (o_proj, M 2048) | FAIL |";
    assert!(text.contains(want), "{want}\n{text}");
}

/// `QFORGE_GPU_CHECK_ONLY` runs the named stages and the report, and skips the rest (for a
/// second, shorter device call after a fix).
#[requires(python3)]
#[test]
fn only_the_named_stages_run() {
    let _alone = alone();
    let (out, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let run = smoke_check(&[], (out.path(), work.path()), "env");
    let log = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{log}");
    assert!(log.contains("-- env: exit 0"), "{log}");
    assert!(log.contains("-- report: exit 0"), "{log}");
    for stage in ["info-cold", "selftest", "bench", "gemm", "profiles-config"] {
        let skipped = format!("== {stage}: skipped (QFORGE_GPU_CHECK_ONLY)");
        assert!(log.contains(&skipped), "{stage}:\n{log}");
    }
    assert!(out.path().join("report.md").is_file(), "{log}");
}
