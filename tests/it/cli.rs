//! What a newcomer meets first (issue #19): every command spells its options the same way,
//! shares its defaults, teaches by example, hides developer switches, takes the built-in
//! recipes and llm-compressor's `scheme=` presets, and explains its failures in one line.
//! Each test runs the real binary.

use crate::support::{self, bundled_model, fixture};
use std::path::Path;
use std::process::{Command, Output};

const COMMANDS: &[&str] = &["quantize", "verify", "bench", "make-model", "recipes"];

fn qforge(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qforge"));
    c.args(args);
    c
}

fn run(args: &[&str]) -> Output {
    qforge(args).output().expect("run qforge")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The help text of `qforge CMD --help` (long help, where clap prints doc details).
fn help(cmd: &str) -> String {
    let o = run(&[cmd, "--help"]);
    assert!(o.status.success(), "{cmd} --help: {}", stderr(&o));
    stdout(&o)
}

/// The `[default: X]` clap shows for `--flag` in `help`.
fn default_of(help: &str, flag: &str) -> String {
    let at = help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("{flag} missing from help:\n{help}"));
    let rest = &help[at..];
    let d = rest.find("[default: ").expect("a default") + "[default: ".len();
    rest[d..].split(']').next().unwrap().to_string()
}

/// Fails with a non-zero exit and exactly one line on stderr, which is returned.
fn one_line_error(o: &Output) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "succeeded: {}", stdout(o));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn verify_takes_hub_revisions_and_passes_them_to_the_resolver() {
    let h = help("verify");
    assert!(h.contains("--revision <REV>"), "{h}");
    assert!(h.contains("--reference-revision <REV>"), "{h}");
    let cache = tempfile::tempdir().unwrap();
    for (flags, named) in [
        (
            &["--model", "org/quantized", "--revision", "v9"][..],
            "--model",
        ),
        (
            &[
                "--model",
                "fixtures/tiny-random-llama",
                "--reference",
                "org/source",
                "--reference-revision",
                "v7",
            ][..],
            "--reference",
        ),
    ] {
        let o = qforge(&["verify", "--prompt", "hi"])
            .args(flags)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", cache.path())
            .output()
            .unwrap();
        let err = one_line_error(&o);
        let rev = if named == "--model" { "v9" } else { "v7" };
        assert!(err.contains(&format!("at revision '{rev}'")), "{err}");
        assert!(err.contains(&format!("{named} org/")), "{err}");
    }
}

#[test]
fn verify_and_quantize_verify_generate_the_same_default_number_of_tokens() {
    let (v, q) = (help("verify"), help("quantize"));
    assert_eq!(
        default_of(&v, "--max-new-tokens"),
        default_of(&q, "--verify-max-new-tokens")
    );
    // The default really is what verify generates: with --min-new-tokens 64 (no early EOS),
    // a 128 default would give 128 tokens.
    let model = bundled_model();
    let o = run(&[
        "verify",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--json",
        "--min-new-tokens",
        "64",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = report["generation"]["token_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 64, "{}", report["generation"]);
    assert_eq!(default_of(&v, "--max-new-tokens"), "64");
}

#[test]
fn every_command_shards_at_llm_compressors_20gb() {
    for cmd in ["quantize", "make-model"] {
        assert_eq!(default_of(&help(cmd), "--max-shard-size"), "20GB", "{cmd}");
    }
}

#[test]
fn help_is_consistent_teaches_and_hides_developer_switches() {
    let top = run(&["--help"]);
    let mut all = stdout(&top);
    for cmd in COMMANDS {
        let h = help(cmd);
        assert!(h.contains("Examples:\n  qforge "), "{cmd}: no example\n{h}");
        let short = stdout(&run(&[cmd, "-h"]));
        all.push_str(&h);
        all.push_str(&short);
    }
    for internal in [
        "QFORGE_",
        "seed model",
        "the seed's",
        "<MODEL>",
        "DIR|REPO>",
        "HUB_ID",
        "super::",
    ] {
        assert!(!all.contains(internal), "help shows {internal}");
    }
    for cmd in ["quantize", "verify", "bench"] {
        assert!(help(cmd).contains("--model <DIR|REPO_ID>"), "{cmd}");
    }
    assert!(help("verify").contains("--reference <DIR|REPO_ID>"));
    assert!(help("quantize").contains("- avx512-bf16: an x86 CPU with AVX-512 BF16"));
    assert!(help("bench").contains("DeepSeek-R1-Distill-Llama-70B FP8-dynamic model card"));
}

#[test]
fn recipes_lists_every_shipped_recipe_with_its_scheme() {
    let o = run(&["recipes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = stdout(&o);
    for (scheme, file) in support::PRESET_RECIPES {
        let name = &file.trim_end_matches(".yaml");
        let line = list
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{list}"));
        assert_eq!(line.split_whitespace().nth(1), Some(*scheme), "{line}");
        assert!(line.len() > name.len() + scheme.len() + 20, "{line}");
    }
    let shown = stdout(&run(&["recipes", "--show", "w4a16"]));
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/w4a16.yaml"))
        .unwrap();
    assert_eq!(shown, file);
    let err = one_line_error(&run(&["recipes", "--show", "fp9"]));
    assert!(
        err.contains("fp8_dynamic, ") && err.contains("mxfp4a16"),
        "{err}"
    );
}

/// `quantize` of `model` into `out` with `how` (`--recipe X` or `--scheme Y ...`).
fn quantize_with(model: &Path, out: &Path, how: &[&str], dir: &Path) -> Output {
    qforge(&[
        "quantize",
        "--model",
        s(model),
        "--output",
        s(out),
        "--json",
    ])
    .args(how)
    .current_dir(dir)
    .output()
    .unwrap()
}

#[test]
fn a_shipped_recipe_by_name_works_from_any_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let golden = fixture("tiny-llama3-fp8-dynamic");
    for (i, name) in ["fp8_dynamic", "FP8_DYNAMIC"].iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        // Run from a folder without recipes/: the recipe comes from the binary.
        let o = quantize_with(
            &fixture("tiny-llama3-bf16"),
            &out,
            &["--recipe", name],
            tmp.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        for f in ["model.safetensors", "recipe.yaml", "config.json"] {
            let (got, want) = (out.join(f), golden.join(f));
            assert!(
                std::fs::read(&got).unwrap() == std::fs::read(&want).unwrap(),
                "{name}: {f} differs from llm-compressor's"
            );
        }
    }
    let out = tmp.path().join("bad");
    let o = quantize_with(&bundled_model(), &out, &["--recipe", "fp9"], tmp.path());
    let err = one_line_error(&o);
    assert!(
        err.contains("no such file") && err.contains("w4a16_asym"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn scheme_writes_what_llm_compressor_writes_for_that_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let schemes = fixture("schemes");
    for preset in ["W8A8", "NVFP4A16"] {
        let out = tmp.path().join(preset);
        let how = ["--scheme", preset];
        let o = quantize_with(&schemes.join("g128-bf16"), &out, &how, tmp.path());
        assert!(o.status.success(), "{}", stderr(&o));
        let golden = schemes.join(format!("g128-{preset}"));
        for f in ["model.safetensors", "recipe.yaml", "config.json"] {
            assert!(
                std::fs::read(out.join(f)).unwrap() == std::fs::read(golden.join(f)).unwrap(),
                "--scheme {preset}: {f} differs from llm-compressor's"
            );
        }
    }
    // --ignore replaces the default lm_head; alone, it ignores nothing.
    let out = tmp.path().join("ignore");
    let how = [
        "--scheme",
        "fp8_dynamic",
        "--ignore",
        "re:.*down_proj",
        "lm_head",
    ];
    let o = quantize_with(&fixture("tiny-llama3-bf16"), &out, &how, tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml = std::fs::read_to_string(out.join("recipe.yaml")).unwrap();
    assert!(
        yaml.contains("ignore: ['re:.*down_proj', lm_head]"),
        "{yaml}"
    );
    assert!(yaml.contains("scheme: FP8_DYNAMIC"), "{yaml}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ignored = summary["ignored"].as_array().unwrap();
    assert!(ignored
        .iter()
        .any(|m| m.as_str().unwrap().ends_with("down_proj")));
    let out = tmp.path().join("none");
    let how = ["--scheme", "W4A16", "--ignore"];
    let o = quantize_with(&schemes.join("g128-bf16"), &out, &how, tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml = std::fs::read_to_string(out.join("recipe.yaml")).unwrap();
    assert!(yaml.contains("ignore: []"), "{yaml}");
}

#[test]
fn scheme_and_recipe_conflict_and_bad_presets_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = bundled_model();
    let out = tmp.path().join("out");
    let both = ["--scheme", "W8A8", "--recipe", "w8a8"];
    let o = quantize_with(&model, &out, &both, tmp.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    let o = quantize_with(
        &model,
        &out,
        &["--recipe", "w8a8", "--ignore", "x"],
        tmp.path(),
    );
    let err = one_line_error(&o);
    assert!(err.contains("--ignore goes with --scheme"), "{err}");
    let o = quantize_with(&model, &out, &["--scheme", "FP9"], tmp.path());
    let err = one_line_error(&o);
    assert!(
        err.contains("--scheme FP9") && err.contains("MXFP4A16"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_mistyped_local_folder_is_reported_as_such_beside_the_hub_failure() {
    let cache = tempfile::tempdir().unwrap();
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let out = cache.path().join("out");
    let args = [
        "quantize",
        "--model",
        "fixtures/tiny-llama",
        "--recipe",
        "fp8_dynamic",
    ];
    // Offline, and with a hub that does not answer.
    for (key, value, hub_fact) in [
        ("HF_HUB_OFFLINE", "1", "is not in the cache"),
        ("HF_ENDPOINT", "http://127.0.0.1:9", "network error"),
    ] {
        let o = qforge(&args)
            .args(["--output", s(&out)])
            .current_dir(crate_dir)
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_DOWNLOAD_TIMEOUT", "2")
            .env(key, value)
            .output()
            .unwrap();
        let err = one_line_error(&o);
        assert!(
            err.contains("--model fixtures/tiny-llama: no such folder, and "),
            "{err}"
        );
        assert!(err.contains(hub_fact), "{err}");
    }
}

/// The data bytes of a safetensors file: its size less the 8-byte length and the header.
fn tensor_bytes(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes.len() as u64 - 8 - header
}

#[test]
fn the_summary_compares_tensor_bytes_in_with_tensor_bytes_out() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama3-bf16");
    let out = tmp.path().join("fp8");
    let o = quantize_with(&model, &out, &["--recipe", "fp8_dynamic"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (tin, tout) = (
        j["input_bytes"].as_u64().unwrap(),
        j["output_tensor_bytes"].as_u64().unwrap(),
    );
    assert_eq!(tin, tensor_bytes(&model.join("model.safetensors")));
    assert_eq!(tout, tensor_bytes(&out.join("model.safetensors")));
    // FP8 weights: fewer tensor bytes out than in, though the files (tokenizer included)
    // outweigh the input's tensors.
    assert!(tout < tin, "{tout} >= {tin}");
    assert!(j["output_bytes"].as_u64().unwrap() > tout);
    let human = run(&[
        "quantize",
        "--model",
        s(&model),
        "--recipe",
        "fp8_dynamic",
        "--output",
        s(&tmp.path().join("human")),
    ]);
    let text = stdout(&human);
    let line = text.lines().find(|l| l.starts_with("tensors: ")).unwrap();
    let gb = |x: u64| format!("{:.3} GB", x as f64 / 1e9);
    assert!(
        line.contains(&format!("{} in, {} out", gb(tin), gb(tout))),
        "{text}"
    );
}

#[test]
fn device_auto_without_a_gpu_gives_no_install_advice() {
    let model = bundled_model();
    let o = run(&[
        "verify",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let Some(line) = err
        .lines()
        .find(|l| l.contains("--device auto: using the CPU"))
    else {
        eprintln!("skipped: this machine has a usable GPU");
        return;
    };
    assert!(!line.contains("install"), "{line}");
    if line.contains("driver") || line.contains("CUDA device") {
        panic!("{line}");
    }
    // An explicit --device cuda keeps the advice.
    let o = run(&[
        "verify",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--device",
        "cuda",
    ]);
    let err = one_line_error(&o);
    if line.contains("no NVIDIA GPU found") {
        assert!(err.contains("install the NVIDIA driver") || err.contains("CUDA device"));
    }
}

#[test]
fn group_presets_on_a_model_too_small_for_group_128_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let model = bundled_model();
    let out = tmp.path().join("w4a16");
    let o = quantize_with(&model, &out, &["--recipe", "w4a16"], tmp.path());
    let err = one_line_error(&o);
    assert!(
        err.contains("too small for W4A16's group size 128"),
        "{err}"
    );
    assert!(err.contains("in_features: 48, 128"), "{err}");
    assert!(err.contains("NVFP4A16 (group 16)"), "{err}");
    assert!(!err.contains("add the module"), "{err}");
    // The advice works.
    let o = quantize_with(&model, &out, &["--scheme", "NVFP4A16"], tmp.path());
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A reader that goes away early (`qforge recipes --show w8a8 | head -1`) ends qforge quietly,
/// as it ends other command-line tools, never with a panic.
#[test]
fn a_closed_output_pipe_ends_quietly() {
    let mut child = support::qforge()
        .args(["recipes", "--show", "w8a8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
