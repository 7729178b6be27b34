//! Calibrated recipes against llm-compressor 0.14's own output: the six cases of
//! `fixtures/calibration/` (input-recipe.yaml → recipe.yaml and config.json byte for byte),
//! the calibration steps they ask for, and every refusal of the calibrated grammar.

use crate::support::fixture;
use qforge::format;
use qforge::recipe::arch::linear_modules;
use qforge::recipe::{
    resolve_mappings, Batching, CalibStep, DuoScaling, MappingKind, Recipe, Scheme, Strategy,
};
use qforge::Error;
use serde_json::Value;
use std::path::Path;

const CASES: &[&str] = &[
    "awq_w4a16_asym",
    "fp8_static_kv",
    "gptq_w4a16",
    "gptq_w4g64_actorder_weight",
    "gptq_w8a8",
    "smoothquant_gptq_w8a8",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn case(name: &str) -> std::path::PathBuf {
    fixture(&format!("calibration/g128-{name}"))
}

fn input(name: &str) -> Recipe {
    Recipe::from_file(&case(name).join("input-recipe.yaml")).unwrap()
}

/// The source model's module names from its safetensors header, in module order.
fn source_modules() -> (Value, Vec<String>) {
    let dir = fixture("schemes/g128-bf16");
    let config: Value = serde_json::from_str(&read(&dir.join("config.json"))).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"].as_array().unwrap();
            (
                k.clone(),
                shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect();
    let (modules, warning) = linear_modules(&config, &shapes).unwrap();
    assert_eq!(warning, None);
    (config, modules)
}

#[test]
fn every_case_writes_llm_compressors_recipe_yaml() {
    for name in CASES {
        let recipe = input(name);
        let want = read(&case(name).join("recipe.yaml"));
        assert_eq!(recipe.to_yaml(), want, "{name}");
    }
}

#[test]
fn every_case_writes_llm_compressors_config_json() {
    let (config, modules) = source_modules();
    for name in CASES {
        let plan = input(name).plan().unwrap();
        let assigned = plan.assign(&modules).unwrap();
        let ignored: Vec<String> = modules
            .iter()
            .zip(&assigned)
            .filter(|(_, a)| a.is_none())
            .map(|(m, _)| m.clone())
            .collect();
        assert_eq!(ignored, ["lm_head"], "{name}");
        let got = format::model_config(&config, &plan.quantization_config(&ignored));
        assert_eq!(got, read(&case(name).join("config.json")), "{name}");
    }
}

/// llm-compressor's recipe.yaml parses back to a recipe that writes it again (the GPTQ
/// group with its resolved `actorder: weight`, AWQ's explicit mappings).
#[test]
fn written_recipes_read_back_to_themselves() {
    for name in [
        "awq_w4a16_asym",
        "fp8_static_kv",
        "gptq_w4a16",
        "gptq_w4g64_actorder_weight",
    ] {
        let text = read(&case(name).join("recipe.yaml"));
        let recipe = Recipe::from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(recipe.to_yaml(), text, "{name}");
        assert_eq!(
            recipe.plan().unwrap(),
            input(name).plan().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn calibration_steps_of_each_case() {
    let gptq = |dampening| CalibStep::Gptq {
        block_size: 128,
        dampening_frac: Some(dampening),
        batching: Batching::Auto,
    };
    assert_eq!(input("gptq_w4a16").calibration(), [gptq(0.01)]);
    assert_eq!(
        input("gptq_w4g64_actorder_weight").calibration(),
        [gptq(0.05)]
    );
    assert_eq!(
        input("fp8_static_kv").calibration(),
        [CalibStep::StaticObservers]
    );
    let steps = input("smoothquant_gptq_w8a8").calibration();
    match &steps[..] {
        [CalibStep::SmoothQuant {
            strength,
            mappings,
            ignore,
        }, g] => {
            assert_eq!((*strength, mappings.len(), ignore.len()), (0.8, 2, 0));
            assert_eq!(mappings[1].smooth_layer, "re:.*post_attention_layernorm");
            assert_eq!(
                mappings[1].balance_layers,
                ["re:.*gate_proj", "re:.*up_proj"]
            );
            assert_eq!(*g, gptq(0.01));
        }
        other => panic!("{other:?}"),
    }
    match &input("awq_w4a16_asym").calibration()[..] {
        [CalibStep::Awq {
            mappings,
            duo_scaling,
            n_grid,
        }] => {
            assert_eq!(
                (mappings.len(), *duo_scaling, *n_grid),
                (4, DuoScaling::Both, 20)
            );
            assert_eq!(mappings[3].smooth_layer, "re:.*up_proj$");
        }
        other => panic!("{other:?}"),
    }
    for name in CASES {
        let first = input(name).requires_calibration();
        let want = match *name {
            "awq_w4a16_asym" => "AWQModifier",
            "fp8_static_kv" => "QuantizationModifier",
            "smoothquant_gptq_w8a8" => "SmoothQuantModifier",
            _ => "GPTQModifier",
        };
        assert_eq!(first, Some(want), "{name}");
    }
    let data_free = Recipe::from_file(&fixture("schemes/g128-W4A16/recipe.yaml")).unwrap();
    assert_eq!(data_free.requires_calibration(), None);
    assert!(data_free.calibration().is_empty());
}

#[test]
fn plans_say_which_scheme_each_group_is() {
    let group = |name: &str| input(name).plan().unwrap().groups.remove(0);
    // GPTQ on a preset keeps the preset (its round-to-nearest layout and format).
    let g = group("gptq_w4a16");
    assert_eq!(
        (g.preset, g.weights.unwrap().actorder.as_deref()),
        (Some(Scheme::W4A16), Some("static"))
    );
    // Group 64 is no data-free preset: the pipeline quantizes it from its args.
    let g = group("gptq_w4g64_actorder_weight");
    let w = g.weights.unwrap();
    assert_eq!(
        (g.preset, w.group_size, w.actorder.as_deref()),
        (None, Some(64), Some("weight"))
    );
    // Static FP8: per-tensor weights, a static per-tensor input scale, FP8 KV scales.
    let plan = input("fp8_static_kv").plan().unwrap();
    let g = &plan.groups[0];
    assert_eq!((g.preset, g.preset_name), (None, Some("FP8")));
    let i = g.input_activations.as_ref().unwrap();
    assert_eq!(
        (i.strategy, i.dynamic, i.observer.as_deref()),
        (
            Strategy::Tensor,
            qforge::recipe::Dynamic::Static,
            Some("static_minmax")
        )
    );
    let kv = plan.kv_cache_scheme.unwrap();
    assert_eq!((kv.num_bits, kv.observer), (8, None));
    assert_eq!(group("awq_w4a16_asym").preset, Some(Scheme::W4A16Asym));
}

/// The module names of a Llama layer stack in `named_modules()` order (leaves).
fn llama_names(with_v: bool) -> Vec<String> {
    let mut names = vec!["model.embed_tokens".to_string()];
    for n in 0..2 {
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .filter(|m| with_v || **m != "v_proj")
        {
            names.push(format!("model.layers.{n}.self_attn.{m}"));
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("model.layers.{n}.mlp.{m}"));
        }
        names.push(format!("model.layers.{n}.input_layernorm"));
        names.push(format!("model.layers.{n}.post_attention_layernorm"));
    }
    names.push("model.norm".into());
    names
}

#[test]
fn mappings_resolve_on_the_fixture_layers_and_refuse_missing_modules() {
    let Some(CalibStep::SmoothQuant {
        mappings, ignore, ..
    }) = input("smoothquant_gptq_w8a8")
        .calibration()
        .into_iter()
        .next()
    else {
        panic!("SmoothQuant first")
    };
    let got = resolve_mappings(
        MappingKind::SmoothQuant,
        &mappings,
        &ignore,
        &llama_names(true),
    )
    .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].smooth_name, "model.layers.0.input_layernorm");
    assert_eq!(
        got[3].balance_names,
        ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    );
    let e = resolve_mappings(
        MappingKind::SmoothQuant,
        &mappings,
        &ignore,
        &llama_names(false),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "recipe: SmoothQuantModifier: error resolving mappings for given architecture (Found a final \
         incomplete set with matches found for keys: re:.*input_layernorm, re:.*q_proj, re:.*k_proj \
         but no matches found for keys: re:.*v_proj)"
    );
    let r = input("awq_w4a16_asym");
    assert!(r.check_architecture("LlamaForCausalLM").is_ok());
    let e = r
        .check_architecture("MixtralForCausalLM")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no default mappings for architecture MixtralForCausalLM"),
        "{e}"
    );
}

/// AWQ's old form (quantization arguments on AWQModifier) is the fixture's two modifiers.
#[test]
fn awq_old_form_splits_like_llm_compressors_shim() {
    let old = "quant_stage:\n  quant_modifiers:\n    AWQModifier:\n      duo_scaling: both\n      \
               targets: Linear\n      scheme: W4A16_ASYM\n      ignore: [lm_head]\n";
    let recipe = Recipe::from_yaml(old).unwrap();
    assert_eq!(recipe, input("awq_w4a16_asym"));
    assert_eq!(
        recipe.to_yaml(),
        read(&case("awq_w4a16_asym").join("recipe.yaml"))
    );
}

/// Two stages become one, named after the last, each group keeping its name and place.
#[test]
fn stages_merge_and_groups_keep_their_names() {
    let yaml = "first_stage:\n  smooth_modifiers:\n    SmoothQuantModifier: {smoothing_strength: 0.25, \
                mappings: [[['re:.*q_proj'], 're:.*input_layernorm']], ignore: [lm_head]}\n\
                second_stage:\n  quant_modifiers:\n    GPTQModifier: {scheme: W8A8, actorder: null, \
                block_size: 64, dampening_frac: null, batched_quantization: 4}\n";
    let r = Recipe::from_yaml(yaml).unwrap();
    assert_eq!(
        r.to_yaml(),
        "second_stage:\n  smooth_modifiers:\n    SmoothQuantModifier:\n      requires_calibration_data: true\n      \
         smoothing_strength: 0.25\n      mappings:\n      - - ['re:.*q_proj']\n        - re:.*input_layernorm\n      \
         ignore: [lm_head]\n      algorithm: smoothquant\n  quant_modifiers:\n    GPTQModifier:\n      \
         targets: [Linear]\n      ignore: []\n      scheme: W8A8\n      bypass_divisibility_checks: false\n      \
         requires_calibration_data: true\n      block_size: 64\n      batched_quantization: 4\n"
    );
    assert_eq!(
        r.calibration()[1],
        CalibStep::Gptq {
            block_size: 64,
            dampening_frac: None,
            batching: Batching::Max(4)
        }
    );
    assert_eq!(
        r.plan().unwrap().groups[0]
            .weights
            .as_ref()
            .unwrap()
            .actorder,
        None
    );
}

fn stage(modifiers: &str) -> String {
    format!("s_stage:\n  q_modifiers:\n{modifiers}")
}

#[test]
fn calibrated_grammar_refusals_are_one_line() {
    let gptq = "    GPTQModifier: {scheme: W4A16}\n";
    let cases: Vec<(String, &str)> = vec![
        (stage("    GPTQModifier: {scheme: W4A16, actorder: true}\n"), "recipe: GPTQModifier.actorder: actorder=True previously mapped to ActivationOrdering.GROUP, which has been removed. Consider using actorder='weight' instead."),
        (stage("    GPTQModifier: {scheme: W4A16, actorder: dynamic}\n"), "recipe: GPTQModifier.actorder: actorder='dynamic' has been removed."),
        (stage("    GPTQModifier: {scheme: W4A16, batched_quantization: 0}\n"), "recipe: GPTQModifier.batched_quantization: batched_quantization must be a positive integer"),
        (stage("    GPTQModifier: {scheme: W4A16, offload_hessians: true}\n"), "recipe: GPTQModifier: unknown argument `offload_hessians`"),
        (stage("    GPTQModifier: {scheme: W4A16, block_size: 0}\n"), "recipe: GPTQModifier.block_size: expected a positive integer"),
        (stage("    GPTQModifier: {scheme: W4A16, dampening_frac: -1}\n"), "recipe: GPTQModifier.dampening_frac: expected a non-negative number or null"),
        (stage("    GPTQModifier: {scheme: W4A16, requires_calibration_data: false}\n"), "recipe: GPTQModifier.requires_calibration_data: GPTQModifier always needs calibration data"),
        (
            stage("    GPTQModifier:\n      actorder: null\n      config_groups:\n        g:\n          targets: [Linear]\n          weights: {num_bits: 4, type: int, strategy: group, group_size: 128, actorder: weight}\n"),
            "recipe: GPTQModifier: Cannot resolve activation ordering when both `GPTQModifier.actorder` and `QuantizationScheme.actorder` are provided and differ (None, weight).",
        ),
        (stage(&format!("    SmoothQuantModifier: {{smoothing_strength: 1.5}}\n{gptq}")), "recipe: SmoothQuantModifier.smoothing_strength: 1.5 is outside [0, 1]"),
        (stage(&format!("    SmoothQuantModifier: {{smoothing_strength: -0.1}}\n{gptq}")), "recipe: SmoothQuantModifier.smoothing_strength: -0.1 is outside [0, 1]"),
        (stage(&format!("    SmoothQuantModifier: {{mappings: [re:.*q_proj]}}\n{gptq}")), "recipe: SmoothQuantModifier.mappings: expected a list of [[balance layers...], smooth layer] pairs"),
        (stage(&format!("    SmoothQuantModifier: {{algorithm: log_equalization}}\n{gptq}")), "SmoothQuantModifier.algorithm: log_equalization is not supported yet"),
        (stage("    SmoothQuantModifier: {}\n"), "a recipe without QuantizationModifier or GPTQModifier (SmoothQuantModifier) is not supported yet"),
        (stage("    AWQModifier: {}\n"), "recipe: Recipe includes AWQModifier with no subsequent quantization modifier: [\"AWQModifier\"]. AWQ must be run with a subsequent quantization modifier"),
        (stage("    AWQModifier: {duo_scaling: maybe}\n    QuantizationModifier: {scheme: W4A16}\n"), "recipe: AWQModifier.duo_scaling: duo_scaling must be True, False, or 'both', got \"maybe\""),
        (stage("    AWQModifier: {mappings: [{smooth_layer: x}]}\n    QuantizationModifier: {scheme: W4A16}\n"), "recipe: AWQModifier.mappings[0]: `smooth_layer` (a string) and `balance_layers` are required"),
        (
            stage("    AWQModifier: {}\n    QuantizationModifier: {scheme: FP8, kv_cache_scheme: null}\n"),
            "AWQModifier: duo_scaling is only supported with per-channel quantization strategies (group or channel), but found TENSOR strategy on config group group_0. Please set duo_scaling=False or use a per-channel quantization strategy.",
        ),
        (stage("    QuantizationModifier: {scheme: W4A16}\n    AWQModifier: {}\n"), "recipe: Recipe includes AWQModifier with no subsequent quantization modifier: [\"QuantizationModifier\", \"AWQModifier\"]"),
        (stage(&format!("{gptq}    QuantizationModifier: {{scheme: W8A8}}\n")), "more than one quantization modifier (GPTQModifier, QuantizationModifier) is not supported yet"),
        (
            "a_stage:\n  q_modifiers:\n    GPTQModifier: {scheme: W4A16}\nb_stage:\n  q_modifiers:\n    GPTQModifier: {scheme: W8A8}\n".into(),
            "two GPTQModifier in group `q_modifiers` are not supported yet",
        ),
        (
            stage("    QuantizationModifier: {scheme: FP8, kv_cache_scheme: {num_bits: 8, type: float, strategy: tensor, dynamic: true}}\n"),
            "QuantizationModifier.kv_cache_scheme: only static, symmetric, per-tensor 8-bit KV-cache scales are supported yet",
        ),
        // A weight format the calibration pipeline does not write is refused even with data.
        (
            stage("    GPTQModifier:\n      config_groups:\n        g:\n          targets: [Linear]\n          weights: {num_bits: 3, type: int, strategy: group, group_size: 128}\n"),
            "GPTQModifier.config_groups.g: these are the arguments of scheme W3A16, which is not supported yet",
        ),
        (stage("    GPTQModifier: {scheme: W4AFP8}\n"), "scheme W4AFP8 is not supported yet"),
    ];
    for (yaml, want) in cases {
        let e = Recipe::from_yaml(&yaml).expect_err(&yaml).to_string();
        assert!(e.starts_with(want), "for\n{yaml}\ngot:  {e}\nwant: {want}");
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
}

/// Static activations through explicit config groups, FP8 and INT8: accepted as
/// calibrated, with llm-compressor's `minmax` observer.
#[test]
fn explicit_static_groups_are_calibrated() {
    for (kind, format) in [("float", "float-quantized"), ("int", "int-quantized")] {
        let yaml = stage(&format!(
            "    QuantizationModifier:\n      config_groups:\n        group_0:\n          targets: [Linear]\n          \
             weights: {{num_bits: 8, type: {kind}, strategy: channel, symmetric: true, dynamic: false}}\n          \
             input_activations: {{num_bits: 8, type: {kind}, strategy: tensor, symmetric: true, dynamic: false}}\n"
        ));
        let r = Recipe::from_yaml(&yaml).unwrap();
        assert_eq!(r.requires_calibration(), Some("QuantizationModifier"));
        assert_eq!(r.calibration(), [CalibStep::StaticObservers]);
        let g = r.plan().unwrap().groups.remove(0);
        assert_eq!(g.format.as_deref(), Some(format));
        assert_eq!(
            g.input_activations.unwrap().observer.as_deref(),
            Some("minmax")
        );
        assert!(r.to_yaml().contains("requires_calibration_data: true"));
    }
    // The same group with dynamic inputs is data-free (and a preset for int: W8A8).
    let data_free = Recipe::from_yaml(&stage(
        "    QuantizationModifier:\n      config_groups:\n        group_0:\n          targets: [Linear]\n          \
         weights: {num_bits: 8, type: int, strategy: channel, symmetric: true, dynamic: false}\n          \
         input_activations: {num_bits: 8, type: int, strategy: token, symmetric: true, dynamic: true}\n",
    ))
    .unwrap();
    assert_eq!(data_free.requires_calibration(), None);
    assert!(matches!(
        Recipe::from_yaml(&stage("    QuantizationModifier: {scheme: W4AFP8}\n")),
        Err(Error::Unsupported(_))
    ));
}

/// The shipped calibrated recipes are the fixtures' recipes: same recipe.yaml, and
/// `qforge recipes` marks them as needing data.
#[test]
fn shipped_calibrated_recipes_are_the_fixture_recipes() {
    for (shipped, case_name) in [
        ("gptq_w4a16", "gptq_w4a16"),
        ("gptq_w8a8", "gptq_w8a8"),
        ("fp8_static", "fp8_static_kv"),
    ] {
        let r = qforge::recipe::find_shipped(shipped).unwrap();
        assert_eq!(
            r.recipe().unwrap().to_yaml(),
            read(&case(case_name).join("recipe.yaml")),
            "{shipped}"
        );
        assert!(r.requires_calibration().is_some(), "{shipped}");
        assert!(r.summary().ends_with("Needs --dataset."), "{shipped}");
    }
    let out = crate::support::qforge().arg("recipes").output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let gptq = table.lines().find(|l| l.starts_with("gptq_w8a8 ")).unwrap();
    assert!(gptq.ends_with("Needs --dataset."), "{gptq}");
    let data_free = table.lines().find(|l| l.starts_with("w8a8 ")).unwrap();
    assert!(!data_free.contains("--dataset"), "{data_free}");
}

/// `quantize` refuses a calibrated recipe before writing anything, naming the modifier
/// (until the calibration pipeline takes it).
#[test]
fn quantize_refuses_a_calibrated_recipe_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = crate::support::qforge()
        .args(["quantize", "--model"])
        .arg(fixture("schemes/g128-bf16"))
        .args(["--recipe", "gptq_w4a16", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("GPTQModifier needs calibration data"),
        "{stderr}"
    );
    assert!(!out.exists());
}
