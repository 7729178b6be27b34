//! Mutation fuzzing of the recipe parser: shipped recipes and the llm-compressor fixtures'
//! recipe.yaml, mutated at the byte level and with YAML tokens (anchors, aliases, tags,
//! flow collections, regexes), through `Recipe::from_yaml`, `plan` and `assign` on module
//! names. Promise: no panic, no hang, either a one-line error or a recipe whose emitted
//! `recipe.yaml` parses back to itself. Also the limits the first campaign confirmed:
//! billion laughs, deep nesting and catastrophic regexes end in clean errors, quickly.

use super::util::{apply, assert_one_line, byte_op, config, ByteOp};
use crate::support;
use proptest::prelude::*;
use proptest::sample::Index;
use qforge::recipe::{resolve_mappings, CalibStep, MappingKind, Recipe};
use std::fs;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut paths: Vec<_> = support::PRESET_RECIPES
            .iter()
            .map(|(_, f)| support::recipe(f))
            .collect();
        paths.push(support::recipe("fp8_dynamic_config_groups.yaml"));
        let schemes = support::shared().join("fixtures/schemes");
        for e in fs::read_dir(&schemes).unwrap() {
            let p = e.unwrap().path().join("recipe.yaml");
            if p.is_file() {
                paths.push(p);
            }
        }
        // The calibrated recipes: llm-compressor's inputs and what it wrote back.
        let calibration = support::shared().join("fixtures/calibration");
        for e in fs::read_dir(&calibration).unwrap() {
            for file in ["input-recipe.yaml", "recipe.yaml"] {
                let p = e.as_ref().unwrap().path().join(file);
                if p.is_file() {
                    paths.push(p);
                }
            }
        }
        paths.sort();
        paths
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect()
    })
}

/// Module names to assign, including one that makes a backtracking regex explode.
fn modules() -> Vec<String> {
    let mut m: Vec<String> = (0..2)
        .flat_map(|l| {
            ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"]
                .map(|p| format!("model.layers.{l}.{p}"))
        })
        .collect();
    m.push("lm_head".into());
    m.push(format!("{}!", "a".repeat(40)));
    m
}

/// A Llama's leaf modules with norms (for the smoothing mappings), and the long name.
fn named_modules() -> Vec<String> {
    let leaves = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
        "input_layernorm",
        "post_attention_layernorm",
    ];
    let mut m: Vec<String> = (0..2)
        .flat_map(|l| leaves.map(|p| format!("model.layers.{l}.{p}")))
        .collect();
    m.push("lm_head".into());
    m.push(format!("{}!", "a".repeat(40)));
    m
}

/// An emitted recipe.yaml as it reads back: YAML loaders give `!!python/tuple` (the
/// default SmoothQuant mappings) as a list, which is then written as one.
fn untupled(yaml: &str) -> String {
    let tuple = regex::Regex::new(r"!!python/tuple\n +- ").unwrap();
    tuple.replace_all(yaml, "- ").into_owned()
}

/// llm-compressor's GPTQModifier dump does not always read back to itself: `None`s are
/// dropped (`dampening_frac`, `batched_quantization`, `actorder: null` read back as the
/// defaults) and the default actorder is written `static`, which then overrides a group's
/// `weight` (its alias). Such a recipe.yaml is stable from its second writing.
fn gptq(r: &Recipe) -> bool {
    r.calibration()
        .iter()
        .any(|s| matches!(s, CalibStep::Gptq { .. }))
}

/// Parses, plans, assigns and resolves the smoothing mappings; returns the first error
/// (one line, checked) if any.
fn run(text: &str) -> Option<String> {
    let t0 = Instant::now();
    let out = (|| {
        let r = Recipe::from_yaml(text)?;
        let yaml = r.to_yaml();
        let again = Recipe::from_yaml(&yaml)
            .unwrap_or_else(|e| panic!("emitted recipe.yaml does not parse: {e}\n{yaml}"));
        if !gptq(&r) {
            assert_eq!(
                again.to_yaml(),
                untupled(&yaml),
                "emitted recipe.yaml is not stable"
            );
            assert_eq!(again.calibration(), r.calibration());
        }
        let twice = again.to_yaml();
        let thrice = Recipe::from_yaml(&twice).unwrap().to_yaml();
        assert_eq!(thrice, twice, "re-emitted recipe.yaml is not stable");
        r.plan()?.assign(&modules())?;
        for step in r.calibration() {
            let (kind, mappings, ignore) = match step {
                CalibStep::SmoothQuant {
                    mappings, ignore, ..
                } => (MappingKind::SmoothQuant, mappings, ignore),
                CalibStep::Awq { mappings, .. } => (MappingKind::Awq, mappings, Vec::new()),
                _ => continue,
            };
            resolve_mappings(kind, &mappings, &ignore, &named_modules())?;
        }
        Ok::<_, qforge::Error>(())
    })();
    // Generous for a loaded CI machine: a blow-up (exponential backtracking, alias
    // expansion) takes minutes or more.
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    let e = out.err()?.to_string();
    assert_one_line(&e);
    Some(e)
}

const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "!!python/object ",
    "~",
    "null",
    "- ",
    ": ",
    "? ",
    "{",
    "}",
    "[",
    "]",
    "'",
    "\"",
    "\t",
    "\n  ",
    "#",
    "|",
    ">-",
    "---\n",
    "...\n",
    "re:(a+)+$",
    "re:(?=x)",
    "re:[",
    "re:.*",
    "group_128",
    "-1",
    "1e999",
    "0x10",
    "yes",
    "!!python/tuple ",
    "both",
    "1.5",
    "weight",
    "group",
    "[[re:.*q_proj], re:.*input_layernorm]",
];

#[derive(Debug, Clone)]
enum RecipeOp {
    Bytes(Vec<ByteOp>),
    /// A YAML token inserted at a position.
    Token(Index, &'static str),
    /// A line repeated, removed, or indented by two more spaces.
    Line(Index, u8),
}

fn recipe_op() -> impl Strategy<Value = RecipeOp> {
    prop_oneof![
        prop::collection::vec(byte_op(), 1..3).prop_map(RecipeOp::Bytes),
        (any::<Index>(), prop::sample::select(YAML_TOKENS))
            .prop_map(|(i, t)| RecipeOp::Token(i, t)),
        (any::<Index>(), 0u8..3).prop_map(|(i, k)| RecipeOp::Line(i, k)),
    ]
}

fn apply_op(text: &mut Vec<u8>, op: &RecipeOp) {
    match op {
        RecipeOp::Bytes(ops) => apply(text, ops, None),
        RecipeOp::Token(i, t) => {
            let p = i.index(text.len() + 1);
            text.splice(p..p, t.bytes());
        }
        RecipeOp::Line(i, k) => {
            let s = String::from_utf8_lossy(text).into_owned();
            let mut lines: Vec<&str> = s.lines().collect();
            if lines.is_empty() {
                return;
            }
            let n = i.index(lines.len());
            let indented = format!("  {}", lines[n]);
            match k {
                0 => lines.insert(n, lines[n]),
                1 => {
                    lines.remove(n);
                }
                _ => lines[n] = &indented,
            }
            *text = lines.join("\n").into_bytes();
        }
    }
}

proptest! {
    #![proptest_config(config(512, 1))]

    #[test]
    fn recipe_mutations_end_cleanly(
        seed in any::<Index>(),
        ops in prop::collection::vec(recipe_op(), 1..5),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone().into_bytes();
        for op in &ops {
            apply_op(&mut text, op);
        }
        run(&String::from_utf8_lossy(&text));
    }
}

#[test]
fn seeds_parse_and_round_trip() {
    assert!(seeds().len() >= 15, "{}", seeds().len());
    for s in seeds() {
        assert_eq!(run(s), None, "{s}");
    }
}

/// The limits the first campaign confirmed, kept as fixed cases.
#[test]
fn hostile_yaml_ends_in_clean_errors() {
    // Billion laughs: nine levels of ten aliases each.
    let mut laughs = String::from("a0: &a0 [lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        laughs += &format!("a{i}: &a{i} [{refs}]\n");
    }
    let e = run(&laughs).expect("billion laughs refused");
    assert!(!e.is_empty());
    // Deep nesting, flow and block style.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    run(&deep).expect("deep flow nesting refused");
    let block: String = (0..1000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    run(&block).expect("deep block nesting refused");
    // A catastrophic regex in ignore and in targets: fancy_regex's backtrack limit turns it
    // into an error on the long module name rather than an exponential hang.
    let base = fs::read_to_string(support::recipe("fp8_dynamic.yaml")).unwrap();
    for (from, to) in [
        ("ignore: [lm_head]", "ignore: ['re:(a+)+$']"),
        ("targets: Linear", "targets: ['re:(a|aa)+$']"),
    ] {
        assert!(base.contains(from), "{base}");
        if let Some(e) = run(&base.replace(from, to)) {
            assert!(e.contains("re:"), "{e}");
        }
    }
}
