//! `qforge check` and `quantize --tensor-parallel` from the command line, on the bundled model
//! (hidden 48, 3 heads / 1 KV head) and on quantized outputs of it.

use crate::support::*;

fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let run = qforge().arg("check").args(args).output().unwrap();
    (
        run.status.code(),
        String::from_utf8_lossy(&run.stdout).into_owned(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

#[test]
fn a_quantized_checkpoint_by_size() {
    let tmp = tempfile::tempdir().unwrap();
    let out = quantize_bundled(tmp.path(), "fp8_dynamic");
    let dir = out.to_str().unwrap();
    // 3 heads and intermediate 128: TP 1 loads, 2 (heads) and 3 (intermediate) do not.
    let (code, stdout, _) = check(&[dir, "--tensor-parallel", "1"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("CompressedTensorsW8A8Fp8: sm_89+"),
        "{stdout}"
    );
    let (code, stdout, stderr) =
        check(&[dir, "--tensor-parallel", "1,2", "--tensor-parallel", "3"]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("TP 2: model.layers.0.self_attn.qkv_proj"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "TP 3: model.layers.0.mlp.gate_up_proj (gate_proj, up_proj): \
             output_size 128 is not divisible by 3 (tensor_parallel_size)"
        ),
        "{stdout}"
    );
    assert_eq!(
        stderr.trim(),
        "qforge: error: vLLM 0.32.0 would not load it at tensor-parallel 2, 3"
    );
}

#[test]
fn json_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = quantize_bundled(tmp.path(), "fp8_block");
    let (code, stdout, _) = check(&[out.to_str().unwrap(), "--json", "--tensor-parallel", "1"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let tp1 = &v["tensor_parallel"][0];
    assert_eq!(tp1["loadable"], false);
    assert_eq!(tp1["failure"]["rule"], "fp8_block.block_n");
    assert_eq!(
        tp1["failure"]["message"],
        "Weight output_partition_size = 48 is not divisible by weight quantization block_n = 128."
    );
    assert_eq!(v["schemes"][0]["gpus"][0]["min_sm"], 89);
    // The memory is the checkpoint's tensors (nothing of the 1.6 MB tiny model is split at TP 1).
    let bytes: u64 = tp1["weight_bytes_per_gpu"].as_u64().unwrap();
    let file = std::fs::metadata(out.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(bytes < file && bytes + 20_000 > file, "{bytes} vs {file}");
}

#[test]
fn a_plan_of_a_named_shape() {
    let (code, stdout, _) = check(&["--shape", "llama-70b", "--scheme", "fp8_dynamic"]);
    assert_eq!(code, Some(0), "{stdout}");
    for tp in ["   1  yes", "   2  yes", "   4  yes", "   8  yes"] {
        assert!(stdout.contains(tp), "{stdout}");
    }
    assert!(stdout.contains("36.34 GB"), "{stdout}");
}

#[test]
fn quantize_tensor_parallel_refuses_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = qforge()
        .args([
            "quantize",
            "--scheme",
            "fp8_dynamic",
            "--tensor-parallel",
            "2",
            "--model",
        ])
        .arg(bundled_model())
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("at tensor-parallel 2: model.layers.0.self_attn.qkv_proj")
            && stderr
                .contains("num_attention_heads = 3 is not divisible by tensor_parallel_size = 2")
            && stderr.contains("nothing written"),
        "{stderr}"
    );
    assert!(!out.exists());
    // --force writes it anyway, with the warning; TP 1 is fine without.
    let run = qforge()
        .args([
            "quantize",
            "--scheme",
            "fp8_dynamic",
            "--tensor-parallel",
            "2",
            "--force",
            "--model",
        ])
        .arg(bundled_model())
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("writing it anyway (--force)"));
    let run = qforge()
        .args([
            "quantize",
            "--scheme",
            "fp8_dynamic",
            "--tensor-parallel",
            "1",
            "--force",
            "--model",
        ])
        .arg(bundled_model())
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success());
    assert!(!String::from_utf8_lossy(&run.stderr).contains("vLLM"));
}

#[test]
fn quantize_warns_at_the_end_when_vllm_would_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let run = qforge()
        .args(["quantize", "--scheme", "fp8_block", "--model"])
        .arg(bundled_model())
        .arg("--output")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "qforge: warning: vLLM 0.32.0 would not load this output at tensor-parallel 1: \
             model.layers.0.self_attn.qkv_proj (q_proj, k_proj, v_proj), CompressedTensorsW8A8Fp8: \
             Weight output_partition_size = 48 is not divisible by weight quantization block_n = 128."
        ),
        "{stderr}"
    );
    // FP8_DYNAMIC loads: no warning.
    let run = qforge()
        .args(["quantize", "--scheme", "fp8_dynamic", "--model"])
        .arg(bundled_model())
        .arg("--output")
        .arg(tmp.path().join("out2"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&run.stderr).contains("vLLM"));
}

#[test]
fn errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![missing.display().to_string()], "no such directory"),
        (
            vec![bundled_model().display().to_string()],
            "no compressed-tensors quantization_config: not a quantized checkpoint",
        ),
        (
            vec![
                bundled_model().display().to_string(),
                "--scheme".into(),
                "fp8_dynamic".into(),
            ],
            "use them with --model or --shape",
        ),
        (
            vec![
                "--shape".into(),
                "llama-7b".into(),
                "--scheme".into(),
                "fp8_dynamic".into(),
            ],
            "unknown shape llama-7b",
        ),
        (
            vec!["--shape".into(), "tiny".into()],
            "add --scheme PRESET or --recipe",
        ),
        (
            vec!["x".into(), "--tensor-parallel".into(), "0".into()],
            "'0' is not a tensor-parallel size",
        ),
    ];
    for (args, want) in cases {
        let run = qforge().arg("check").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(matches!(run.status.code(), Some(1 | 2)), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
