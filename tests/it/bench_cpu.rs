//! `qforge bench` on the CPU: the CI-sized synthetic llama-1b run, a real checkpoint (the
//! bundled tiny random Llama), argument errors, and `--profiles` parsing.

use crate::support;
use qforge::bench::profile::{parse_profiles, seed_latency, Profile, SEED};
use serde_json::Value;

fn bench(args: &[&str]) -> std::process::Output {
    support::qforge()
        .arg("bench")
        .args(args)
        .output()
        .expect("run qforge")
}

/// Runs `qforge bench ... --json` and returns the parsed report.
fn bench_json(args: &[&str]) -> Value {
    let out = bench(&[args, &["--device", "cpu", "--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qforge bench failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is the JSON report")
}

/// Checks one profile row: its lengths and plausible positive timings; `max_pct` bounds the
/// roofline % (a model that fits in the CPU caches can beat the DRAM copy bandwidth).
fn check_row(row: &Value, prompt: u64, generated: u64, max_pct: f64) {
    assert_eq!(row["profile"], format!("{prompt}/{generated}"));
    assert_eq!(row["prompt_tokens"], prompt);
    assert_eq!(row["generated_tokens"], generated);
    let f = |k: &str| {
        row[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {row}"))
    };
    let (latency, ttft, tps) = (f("latency_s"), f("ttft_s"), f("decode_tokens_per_s"));
    assert!(ttft > 0.0 && latency > ttft, "{row}");
    assert!(tps > 0.0, "{row}");
    // Decode time = generated-1 tokens at the reported rate.
    let decode = (generated - 1) as f64 / tps;
    assert!(
        (ttft + decode - latency).abs() < 1e-6 * latency.max(1.0),
        "{row}"
    );
    let pct = f("roofline_pct");
    assert!(pct > 0.0 && pct < max_pct, "roofline % {pct}");
}

#[test]
fn synthetic_llama_1b_on_the_cpu() {
    let r = bench_json(&["--synthetic", "llama-1b", "--profiles", "32/8"]);
    let rows = r["profiles"].as_array().expect("profiles");
    assert_eq!(rows.len(), 1);
    check_row(&rows[0], 32, 8, 200.0);
    // llama-1b: 16 layers of FP8 Linears (codes + f32 row scales) + the tied BF16 head.
    let (h, i, kv, v) = (2048u64, 8192u64, 512u64, 128256u64);
    let codes = 2 * h * h + 2 * kv * h + 3 * h * i;
    let scales = 4 * (3 * h + 2 * kv + 2 * i);
    let expect = 16 * (codes + scales) + 2 * v * h;
    assert_eq!(r["weight_bytes_per_token"], expect);
    assert_eq!(r["seed_compared"], false);
    assert!(rows[0]["seed_latency_s"].is_null());
    assert!(r["bandwidth_gbps"].as_f64().unwrap() > 0.0);
}

/// `--synthetic-scheme` on the CPU: W8A8 and FP8_BLOCK run their own Linears (codes and
/// scales counted), a weight-only scheme runs as BF16 and says so.
#[test]
fn synthetic_schemes_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let (h, i, kv, v, layers) = (256u64, 384u64, 128u64, 1000u64, 2u64);
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": i, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": v, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "max_position_embeddings": 256
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let linears = 2 * h * h + 2 * kv * h + 3 * h * i; // weights per layer
    let rows = 2 * h + 2 * kv + 2 * i + h; // output rows per layer
    let blocks = 2 * 2 * 2 + 2 * 2 + 2 * 3 * 2 + 2 * 3; // q,o 2×2; k,v 1×2; gate,up 3×2; down 2×3
    for (scheme, per_layer, bf16) in [
        ("w8a8", linears + 4 * rows, false),
        ("fp8_block", linears + 4 * blocks, false),
        ("w4a16", 2 * linears, true),
    ] {
        let r = bench_json(&[
            "--synthetic",
            cfg.to_str().unwrap(),
            "--synthetic-scheme",
            scheme,
            "--profiles",
            "8/4",
        ]);
        check_row(&r["profiles"][0], 8, 4, f64::INFINITY);
        assert_eq!(
            r["weight_bytes_per_token"],
            layers * per_layer + 2 * v * h,
            "{scheme}"
        );
        let model = r["model"].as_str().unwrap();
        assert_eq!(
            model.contains("as BF16 on the CPU"),
            bf16,
            "{scheme}: {model}"
        );
    }
}

#[test]
fn real_checkpoint_tiny_random_llama() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny-random-llama");
    let r = bench_json(&["--model", dir, "--profiles", "16/4,8/2"]);
    let rows = r["profiles"].as_array().expect("profiles");
    assert_eq!(rows.len(), 2);
    check_row(&rows[0], 16, 4, f64::INFINITY);
    check_row(&rows[1], 8, 2, f64::INFINITY);
    // BF16 checkpoint: 2 layers of BF16 Linears + the tied 49152×48 BF16 head.
    let (h, i, kv) = (48u64, 128u64, 16u64);
    let per_layer = 2 * (2 * h * h + 2 * kv * h + 3 * h * i);
    assert_eq!(r["weight_bytes_per_token"], 2 * per_layer + 2 * 49152 * h);
    assert_eq!(r["model"], dir);
}

#[test]
fn argument_errors_are_one_line() {
    for (args, want) in [
        (
            vec!["--profiles", "32/8"],
            "exactly one of --model and --synthetic",
        ),
        (vec!["--synthetic", "llama-3b"], "--synthetic llama-3b"),
        (
            vec!["--synthetic", "tiny", "--profiles", "32x8"],
            "--profiles: `32x8`",
        ),
        (
            vec!["--model", "/nonexistent/qforge-model"],
            "/nonexistent/qforge-model",
        ),
        (
            vec!["--synthetic", "tiny", "--synthetic-scheme", "int3"],
            "invalid value 'int3' for '--synthetic-scheme",
        ),
    ] {
        let out = bench(&[&args[..], &["--device", "cpu"]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A profile longer than the model's context is refused before the weights are built (for
/// llama-1b's 131072 positions the run would otherwise fail only after hours of prefill).
#[test]
fn profiles_longer_than_the_context_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/tiny-random-llama/config.json"
    );
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 64.into();
    let path = dir.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = bench(&[
        "--synthetic",
        path.to_str().unwrap(),
        "--profiles",
        "8/4,60/5",
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "qforge: error: --profiles: 60/5 needs 65 positions, more than the model's context of \
         64 (max_position_embeddings in its config.json)"
    );
    assert!(out.stdout.is_empty());
    // At the limit it runs.
    let r = bench_json(&["--synthetic", path.to_str().unwrap(), "--profiles", "60/4"]);
    check_row(&r["profiles"][0], 60, 4, f64::INFINITY);
}

#[test]
fn seed_expands_to_the_model_card_profiles() {
    let p = parse_profiles("seed").unwrap();
    let pairs: Vec<(usize, usize)> = p.iter().map(|p| (p.prompt, p.generate)).collect();
    assert_eq!(
        pairs,
        [
            (256, 128),
            (512, 256),
            (768, 128),
            (1024, 128),
            (256, 1024),
            (1024, 1024),
            (4096, 512),
            (10240, 1536)
        ]
    );
    let secs: Vec<f64> = p.iter().map(|&p| seed_latency(p).unwrap()).collect();
    assert_eq!(secs, [2.7, 5.3, 2.7, 2.8, 21.1, 21.4, 11.5, 47.2]);
    assert_eq!(SEED.len(), 8);
}

#[test]
fn profile_lists_mix_pairs_and_seed() {
    let p = parse_profiles("32/8, 128/32,seed").unwrap();
    assert_eq!(p.len(), 10);
    assert_eq!(
        p[1],
        Profile {
            prompt: 128,
            generate: 32
        }
    );
    assert_eq!(seed_latency(p[0]), None);
}

#[test]
fn bad_profiles_are_errors() {
    for bad in [
        "", "32", "32/0", "0/8", "a/8", "32/8,", "32/-1", "32/8/1", "seeds",
    ] {
        let e = parse_profiles(bad).expect_err(bad).to_string();
        assert!(e.contains("--profiles"), "{bad}: {e}");
    }
}
