//! Recipes beyond a single preset name: explicit `config_groups` that spell out a preset's
//! args write the same weights and config.json as the preset; mixed `scheme:` maps give
//! one config group per preset, each module quantized exactly as its preset alone would
//! (checked tensor by tensor against the goldens); NVFP4's fused projections must agree.

use crate::support;

use qforge::checkpoint::Checkpoint;
use qforge::quantize::{quantize, QuantizeJob};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn schemes() -> PathBuf {
    support::shared().join("fixtures/schemes")
}

fn modifier(args: &str) -> String {
    format!("default_stage:\n  default_modifiers:\n    QuantizationModifier:\n      ignore: [lm_head]\n{args}")
}

/// Quantizes `<fixture>-bf16` with the recipe text into `dir/<tag>`.
fn run(dir: &Path, fixture: &str, tag: &str, recipe: &str) -> qforge::Result<PathBuf> {
    let path = dir.join(format!("{tag}.yaml"));
    std::fs::write(&path, recipe).unwrap();
    let out = dir.join(tag);
    let input = schemes().join(format!("{fixture}-bf16"));
    quantize(&QuantizeJob::new(input, path, &out)).map(|_| out)
}

type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors(dir: &Path) -> Tensors {
    let ck = Checkpoint::open(dir).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            let v = (
                t.dtype.name().to_string(),
                t.shape.clone(),
                ck.data(t).to_vec(),
            );
            (t.name.clone(), v)
        })
        .collect()
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Each preset's args spelled out as an explicit config group.
const SPELLED: &[(&str, &str)] = &[
    (
        "FP8_BLOCK",
        "weights: {num_bits: 8, type: float, strategy: block, block_structure: [128, 128], symmetric: true, dynamic: false}\n          \
         input_activations: {num_bits: 8, type: float, strategy: group, group_size: 128, symmetric: true, dynamic: true}",
    ),
    (
        "W8A8",
        "weights: {num_bits: 8, type: int, strategy: channel, symmetric: true}\n          \
         input_activations: {num_bits: 8, type: int, strategy: token, dynamic: true}",
    ),
    ("W8A16", "weights: {num_bits: 8, type: int, strategy: group, group_size: 128}"),
    ("W4A16", "weights: {num_bits: 4, type: int, strategy: group, group_size: 128, symmetric: true}"),
    (
        "W4A16_ASYM",
        "weights: {num_bits: 4, type: int, strategy: group, group_size: 128, symmetric: false}",
    ),
    (
        "NVFP4A16",
        "weights: {num_bits: 4, type: float, strategy: tensor_group, group_size: 16, scale_dtype: torch.float8_e4m3fn}",
    ),
    (
        "MXFP4A16",
        "weights: {num_bits: 4, type: float, strategy: group, group_size: 32, scale_dtype: torch.uint8}",
    ),
];

#[test]
fn config_groups_spelling_of_a_preset_writes_the_golden_weights_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (preset, args) in SPELLED {
        for fixture in ["g128", "unaligned"] {
            let golden = schemes().join(format!("{fixture}-{preset}"));
            if !golden.exists() {
                continue;
            }
            let recipe = modifier(&format!(
                "      config_groups:\n        group_0:\n          targets: [Linear]\n          {args}\n"
            ));
            let tag = format!("{fixture}-{preset}");
            let out =
                run(tmp.path(), fixture, &tag, &recipe).unwrap_or_else(|e| panic!("{tag}: {e}"));
            for f in ["model.safetensors", "config.json"] {
                let same =
                    std::fs::read(out.join(f)).unwrap() == std::fs::read(golden.join(f)).unwrap();
                assert!(same, "{tag}: {f} differs from the golden");
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 11);
}

/// Every tensor of `got` equals the tensor of that name in the golden of the preset whose
/// module pattern it matches (`parts`: name fragment → golden directory).
fn assert_tensors_from(got: &Tensors, parts: &[(&str, &Tensors)], fallback: &Tensors) {
    for (name, t) in got {
        let source = parts
            .iter()
            .find(|(frag, _)| name.contains(frag))
            .map_or(fallback, |(_, g)| g);
        assert_eq!(source.get(name), Some(t), "{name}");
    }
    let expected: usize = parts
        .iter()
        .map(|(frag, g)| g.keys().filter(|n| n.contains(frag)).count())
        .sum::<usize>()
        + fallback
            .keys()
            .filter(|n| !parts.iter().any(|(f, _)| n.contains(f)))
            .count();
    assert_eq!(got.len(), expected);
}

#[test]
fn mixed_scheme_map_gives_one_group_per_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "g128",
            "W4A16",
            "FP8_DYNAMIC",
            ["pack-quantized", "float-quantized"],
        ),
        (
            "unaligned",
            "MXFP4A16",
            "NVFP4A16",
            ["mxfp4-pack-quantized", "nvfp4-pack-quantized"],
        ),
    ];
    for (fixture, mlp, attn, formats) in cases {
        let recipe = modifier(&format!(
            "      scheme:\n        {mlp}: ['re:.*mlp.*']\n        {attn}: ['re:.*self_attn.*']\n"
        ));
        let tag = format!("{fixture}-mixed");
        let out = run(tmp.path(), fixture, &tag, &recipe).unwrap();
        let qc = &config(&out)["quantization_config"];
        assert_eq!(qc["format"], "mixed-precision");
        assert_eq!(qc["ignore"], json!(["lm_head"]));
        let groups = qc["config_groups"].as_object().unwrap();
        assert_eq!(groups.len(), 2);
        for (i, (preset, target)) in [(mlp, "re:.*mlp.*"), (attn, "re:.*self_attn.*")]
            .into_iter()
            .enumerate()
        {
            let g = &groups[&format!("group_{i}")];
            let golden = config(&schemes().join(format!("{fixture}-{preset}")));
            let want = &golden["quantization_config"]["config_groups"]["group_0"];
            assert_eq!(g["format"], formats[i]);
            assert_eq!(g["targets"], json!([target]));
            assert_eq!(g["weights"], want["weights"], "{preset}");
            assert_eq!(
                g["input_activations"], want["input_activations"],
                "{preset}"
            );
        }
        let mlp_golden = tensors(&schemes().join(format!("{fixture}-{mlp}")));
        let attn_golden = tensors(&schemes().join(format!("{fixture}-{attn}")));
        let got = tensors(&out);
        assert_tensors_from(
            &got,
            &[(".mlp.", &mlp_golden), (".self_attn.", &attn_golden)],
            &mlp_golden,
        );
    }
}

#[test]
fn nvfp4_fused_projections_must_all_be_nvfp4() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "      scheme:\n        NVFP4A16: ['re:.*q_proj']\n        FP8_DYNAMIC: ['re:.*(k|v|o)_proj']\n",
            "model.layers.0.self_attn.k_proj is not",
        ),
        (
            "      scheme: NVFP4A16\n      targets: ['re:.*mlp.*']\n      ignore: [lm_head, 're:.*up_proj']\n",
            "model.layers.0.mlp.up_proj is not",
        ),
    ];
    for (i, (args, needle)) in cases.into_iter().enumerate() {
        // The second case sets its own ignore list (the last key wins, as in PyYAML).
        let recipe = modifier(args);
        let err = run(tmp.path(), "g128", &format!("fused{i}"), &recipe)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains("NVFP4 global scale"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}
