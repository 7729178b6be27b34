//! Recipes against llm-compressor's real output: recipe.yaml and config.json of the
//! fixture checkpoints, module lists from their safetensors headers, matching rules, and
//! every error a recipe can produce.

use crate::support::fixture;

use qforge::format;
use qforge::recipe::arch::linear_modules;
use qforge::recipe::{find_preset, infer_format, QuantPlan, Recipe, Scheme};
use qforge::Error;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tensor names and shapes from a safetensors header (8-byte length + JSON).
fn tensor_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let mut out = Vec::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let shape = info["shape"].as_array().unwrap();
        out.push((
            name.clone(),
            shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
        ));
    }
    out
}

fn shipped(name: &str) -> Recipe {
    Recipe::from_file(&recipes_dir().join(name)).unwrap()
}

/// What the pipeline does: module list, assignment, ignore list, config.json text.
fn output_config(plan: &QuantPlan, model_dir: &Path) -> String {
    let config = read_json(&model_dir.join("config.json"));
    let tensors = tensor_shapes(&model_dir.join("model.safetensors"));
    let (modules, warning) = linear_modules(&config, &tensors).unwrap();
    assert_eq!(warning, None);
    let assigned = plan.assign(&modules).unwrap();
    let ignored: Vec<String> = modules
        .iter()
        .zip(&assigned)
        .filter(|(_, a)| a.is_none())
        .map(|(m, _)| m.clone())
        .collect();
    format::model_config(&config, &plan.quantization_config(&ignored))
}

#[test]
fn shipped_recipe_writes_the_fixture_recipe_yaml() {
    let recipe = shipped("fp8_dynamic.yaml");
    let yaml = recipe.to_yaml();
    for dir in [
        "tiny-llama3-fp8-dynamic",
        "tiny-tied-fp8-dynamic",
        "schemes/g128-FP8_DYNAMIC",
    ] {
        assert_eq!(yaml, read(&fixture(dir).join("recipe.yaml")), "{dir}");
    }
    assert_eq!(yaml.len(), 215);
    // llm-compressor's own output parses back to the same recipe.
    let fixture = read(&fixture("tiny-llama3-fp8-dynamic/recipe.yaml"));
    assert_eq!(Recipe::from_yaml(&fixture).unwrap(), recipe);
}

#[test]
fn config_groups_recipe_writes_every_argument() {
    let yaml = shipped("fp8_dynamic_config_groups.yaml").to_yaml();
    let args = |dynamic: bool, strategy: &str, observer: &str| {
        format!(
            "            num_bits: 8\n            type: float\n            symmetric: true\n            \
             group_size: null\n            strategy: {strategy}\n            block_structure: null\n            \
             dynamic: {dynamic}\n            actorder: null\n            scale_dtype: null\n            \
             zp_dtype: null\n            observer: {observer}\n            observer_kwargs: {{}}\n"
        )
    };
    let want = format!(
        "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n      config_groups:\n        \
         group_0:\n          targets: [Linear]\n          weights:\n{}          input_activations:\n{}          \
         output_activations: null\n          format: null\n      targets: [Linear]\n      ignore: [lm_head]\n      \
         bypass_divisibility_checks: false\n      requires_calibration_data: false\n",
        args(false, "channel", "memoryless_minmax"),
        args(true, "token", "null"),
    );
    assert_eq!(yaml, want);
    // The written recipe reads back to itself.
    assert_eq!(Recipe::from_yaml(&yaml).unwrap().to_yaml(), yaml);
}

#[test]
fn both_shipped_recipes_plan_fp8_dynamic() {
    let a = shipped("fp8_dynamic.yaml").plan().unwrap();
    let b = shipped("fp8_dynamic_config_groups.yaml").plan().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.groups.len(), 1);
    let g = &a.groups[0];
    assert_eq!(
        (g.name.as_str(), g.preset, g.format.as_deref()),
        ("group_0", Some(Scheme::Fp8Dynamic), Some("float-quantized"))
    );
    assert_eq!(g.targets, ["Linear"]);
    assert_eq!(a.ignore, ["lm_head"]);
    assert!(!a.bypass_divisibility_checks);
    assert_eq!(a.kv_cache_scheme, None);
}

#[test]
fn config_json_is_byte_identical_for_both_tiny_models() {
    let plan = shipped("fp8_dynamic.yaml").plan().unwrap();
    for model in ["tiny-llama3", "tiny-tied"] {
        let got = output_config(&plan, &fixture(&format!("{model}-bf16")));
        let want = read(&fixture(&format!("{model}-fp8-dynamic/config.json")));
        assert_eq!(got, want, "{model}");
    }
    let got = output_config(&plan, &fixture("schemes/g128-bf16"));
    assert_eq!(got, read(&fixture("schemes/g128-FP8_DYNAMIC/config.json")));
    let got = output_config(&plan, &fixture("schemes/unaligned-bf16"));
    assert_eq!(
        got,
        read(&fixture("schemes/unaligned-FP8_DYNAMIC/config.json"))
    );
}

#[test]
fn linear_modules_of_the_tiny_fixtures() {
    for model in ["tiny-llama3-bf16", "tiny-tied-bf16"] {
        let dir = fixture(model);
        let tensors = tensor_shapes(&dir.join("model.safetensors"));
        let (modules, warning) =
            linear_modules(&read_json(&dir.join("config.json")), &tensors).unwrap();
        assert_eq!(warning, None);
        let mut want = Vec::new();
        for n in 0..2 {
            for p in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
            ] {
                want.push(format!("model.layers.{n}.{p}"));
            }
            for p in ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
                want.push(format!("model.layers.{n}.{p}"));
            }
        }
        want.push("lm_head".into());
        assert_eq!(modules, want, "{model}");
    }
    // The tied model stores no lm_head.weight, yet lm_head is a Linear module.
    let tied = tensor_shapes(&fixture("tiny-tied-bf16/model.safetensors"));
    assert!(!tied.iter().any(|(n, _)| n == "lm_head.weight"));
}

fn llama_modules(layers: usize) -> Vec<String> {
    let cfg =
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers});
    let mut tensors = Vec::new();
    for n in 0..layers {
        for p in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            tensors.push((format!("model.layers.{n}.{p}.weight"), vec![8, 8]));
        }
    }
    linear_modules(&cfg, &tensors).unwrap().0
}

fn plan_of(targets: &str, ignore: &str) -> QuantPlan {
    let yaml = format!(
        "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      targets: {targets}\n      \
         ignore: {ignore}\n      scheme: FP8_DYNAMIC\n"
    );
    Recipe::from_yaml(&yaml).unwrap().plan().unwrap()
}

fn quantized(plan: &QuantPlan, modules: &[String]) -> Vec<String> {
    let assigned = plan.assign(modules).unwrap();
    modules
        .iter()
        .zip(assigned)
        .filter(|(_, a)| a.is_some())
        .map(|(m, _)| m.clone())
        .collect()
}

#[test]
fn assign_matches_like_compressed_tensors() {
    let modules = llama_modules(12);
    // re: is Python re.match: anchored at the start only.
    let q = quantized(&plan_of("['re:.*q_proj']", "[]"), &modules);
    assert_eq!(q.len(), 12);
    assert_eq!(q[10], "model.layers.10.self_attn.q_proj");
    assert!(quantized(&plan_of("['re:q_proj']", "[]"), &modules).is_empty());
    let first = quantized(&plan_of("['re:model.layers.1.']", "[]"), &modules);
    assert_eq!(first.len(), 3 * 7, "layers 1, 10 and 11");
    // Exact names, class names, ignore winning over targets.
    let exact = quantized(&plan_of("[model.layers.3.mlp.up_proj]", "[]"), &modules);
    assert_eq!(exact, ["model.layers.3.mlp.up_proj"]);
    let all = quantized(&plan_of("[Linear]", "[lm_head, 're:.*mlp']"), &modules);
    assert_eq!(all.len(), 12 * 4);
    assert!(all.iter().all(|m| m.contains("self_attn")));
    assert!(quantized(&plan_of("[Linear]", "[Module]"), &modules).is_empty());
    // Python look-around works too: ignore everything outside layer 0.
    let layer0 = quantized(
        &plan_of("[Linear]", "['re:(?!model\\.layers\\.0\\.)']"),
        &modules,
    );
    assert_eq!(layer0.len(), 7);
    assert!(layer0.iter().all(|m| m.starts_with("model.layers.0.")));
    let plan = plan_of("[Linear]", "[lm_head]");
    assert_eq!(
        plan.assign(&["lm_head".to_string(), "x".to_string()])
            .unwrap(),
        [None, Some(0)]
    );
}

#[test]
fn assign_picks_the_group_of_the_most_specific_target() {
    let yaml = "a_stage:\n  b_modifiers:\n    QuantizationModifier:\n      scheme:\n        \
                FP8_DYNAMIC: [Linear]\n        fp8_dynamic: ['re:.*down_proj', model.layers.0.mlp.up_proj]\n";
    let recipe = Recipe::from_yaml(yaml).unwrap();
    let plan = recipe.plan().unwrap();
    assert_eq!(plan.groups.len(), 2);
    let modules = llama_modules(1);
    let got = plan.assign(&modules).unwrap();
    assert_eq!(
        got,
        [
            Some(0),
            Some(0),
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(0)
        ]
    );
    // Stage and group names are kept; the scheme map is written back as given.
    assert!(recipe.to_yaml().starts_with(
        "a_stage:\n  b_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n      ignore: []\n      \
         scheme:\n        FP8_DYNAMIC: [Linear]\n        fp8_dynamic: ['re:.*down_proj', model.layers.0.mlp.up_proj]\n"
    ));
}

fn err(yaml: &str) -> Error {
    Recipe::from_yaml(yaml).expect_err(yaml)
}

fn modifier(args: &str) -> String {
    format!("default_stage:\n  default_modifiers:\n    QuantizationModifier:\n{args}")
}

#[test]
fn every_error_is_one_intended_line() {
    let fp8 = "      scheme: FP8_DYNAMIC\n";
    let cases: Vec<(String, &str)> = vec![
        ("a: [b\n".into(), "recipe: invalid YAML"),
        ("x_stage:\n  y_modifiers:\n    SparseGPTModifier: {sparsity: 0.5}\n".into(), "modifier SparseGPTModifier is not supported yet"),
        ("x_stage:\n  y_modifiers:\n    FooModifier: {}\n".into(), "recipe: unknown modifier FooModifier"),
        (modifier(&format!("{fp8}      foo: 1\n")), "recipe: QuantizationModifier: unknown argument `foo`"),
        (modifier("      scheme: FP9\n"), "recipe: unknown scheme FP9 (presets: UNQUANTIZED, W4A16_ASYM, W8A8,"),
        (modifier("      scheme: W4A8\n"), "scheme W4A8 is not supported yet (supported: W4A16_ASYM, W8A8, INT8, FP8_DYNAMIC,"),
        (modifier("      scheme: {NVFP4: [Linear]}\n"), "scheme NVFP4 is not supported yet"),
        (
            modifier(&format!("{fp8}      config_groups: {{g: {{targets: [Linear]}}}}\n")),
            "recipe: QuantizationModifier: set either `scheme` or `config_groups`, not both",
        ),
        (modifier(&format!("{fp8}      ignore: ['re:(unclosed']\n")), "recipe: invalid regular expression `re:(unclosed`: Parsing error at position 9: Opening parenthesis without closing parenthesis"),
        (modifier("      ignore: [lm_head]\n"), "recipe: QuantizationModifier: set `scheme` or `config_groups`"),
        (modifier(&format!("{fp8}      ignore: lm_head\n")), "recipe: QuantizationModifier.ignore: expected a list of strings"),
        (modifier(&format!("{fp8}      kv_cache_scheme: {{num_bits: 8}}\n")), "QuantizationModifier.kv_cache_scheme: `type` must be given explicitly"),
        (
            "x_stage:\n  y_modifiers:\n    GPTQModifier: {scheme: W4A16, actorder: group}\n".into(),
            "recipe: GPTQModifier.actorder: actorder='group' has been removed. Consider using actorder='weight' or actorder=None instead.",
        ),
        ("version: 1\nQuantizationModifier: {scheme: FP8_DYNAMIC}\n".into(), "recipe: no modifier found: expected `<name>_stage: <name>_modifiers: QuantizationModifier: ...` (top-level key `version` is not a `<name>_stage`, so it is ignored)"),
        ("- QuantizationModifier\n".into(), "recipe: expected a mapping of `<name>_stage` keys at the top level"),
        (
            modifier("      config_groups:\n        group_0:\n          targets: [Linear]\n          weights: {num_bits: 4, type: int, strategy: group, group_size: 128}\n          input_activations: {num_bits: 8, type: int, strategy: token, dynamic: true}\n"),
            "QuantizationModifier.config_groups.group_0: these are the arguments of scheme W4A8, which is not supported yet (supported: W4A16_ASYM,",
        ),
        (
            modifier("      config_groups:\n        group_0:\n          targets: [Linear]\n          weights: {num_bits: 8, type: float, strategy: tensor}\n"),
            "QuantizationModifier.config_groups.group_0: these quantization arguments are not supported yet (qforge supports the arguments of W4A16_ASYM,",
        ),
        (
            modifier("      config_groups:\n        group_0:\n          targets: [Linear]\n          weights: {num_bits: 8, type: float, strategy: token}\n"),
            "recipe: QuantizationModifier.config_groups.group_0.weights: static token quantization is impossible: set dynamic: true",
        ),
        (
            modifier("      config_groups:\n        group_0:\n          weights: {num_bits: 8, type: float, strategy: channel}\n"),
            "recipe: QuantizationModifier.config_groups.group_0: `targets` is required",
        ),
    ];
    for (yaml, want) in cases {
        let e = err(&yaml).to_string();
        assert!(e.starts_with(want), "for\n{yaml}\ngot:  {e}\nwant: {want}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
    // The YAML error names its line.
    assert!(err("a:\n  b: [c\n  d: e\n").to_string().contains("line"));
}

#[test]
fn error_kinds_and_file_names() {
    assert!(matches!(
        err(&modifier("      scheme: W4A8\n")),
        Error::Unsupported(_)
    ));
    assert!(matches!(
        err(&modifier("      scheme: W9A9\n")),
        Error::Recipe(_)
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, modifier("      scheme: FP9\n")).unwrap();
    let e = Recipe::from_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("recipe: {}: unknown scheme FP9", path.display())),
        "{e}"
    );
    let missing = Recipe::from_file(&dir.path().join("none.yaml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("none.yaml"), "{missing}");
}

/// The preset table holds the exact args and formats of the presets of the scheme fixtures
/// (schemes/*/config.json), and their recipe.yaml reads back to itself.
#[test]
fn preset_table_matches_the_scheme_fixtures() {
    for scheme in [
        "FP8_BLOCK",
        "FP8_DYNAMIC",
        "MXFP4A16",
        "NVFP4A16",
        "W4A16",
        "W4A16_ASYM",
        "W8A16",
        "W8A8",
    ] {
        let cfg = read_json(&fixture(&format!("schemes/g128-{scheme}/config.json")));
        let group = &cfg["quantization_config"]["config_groups"]["group_0"];
        let args = find_preset(scheme).unwrap().args().unwrap();
        let json =
            |a: &Option<qforge::recipe::QuantArgs>| a.as_ref().map_or(Value::Null, |a| a.to_json());
        assert_eq!(json(&args.weights), group["weights"], "{scheme} weights");
        assert_eq!(
            json(&args.input_activations),
            group["input_activations"],
            "{scheme} inputs"
        );
        let inferred = infer_format(args.weights.as_ref(), args.input_activations.as_ref());
        assert_eq!(inferred, group["format"], "{scheme} format");
        // Its recipe.yaml is recognised, and refused unless implemented.
        let text = read(&fixture(&format!("schemes/g128-{scheme}/recipe.yaml")));
        match Recipe::from_yaml(&text) {
            Ok(r) => assert_eq!(r.to_yaml(), text),
            Err(e) => assert_eq!(
                e.to_string(),
                format!("scheme {scheme} is not supported yet (supported: FP8_DYNAMIC)")
            ),
        }
    }
}
