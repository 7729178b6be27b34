//! Mutation fuzzing of `qforge check`'s reader of config.json (sizes and the
//! `quantization_config` of every preset). Promise: no panic, no hang; either a one-line error,
//! or a model whose verdicts at every tensor-parallel size are computed, each failure one line.

use super::util::{assert_one_line, config, mutate, mutation};
use proptest::prelude::*;
use proptest::sample::Index;
use qforge::checkpoint::DType;
use qforge::recipe::{scheme_recipe, Scheme};
use qforge::serving::{self, ServingModel, Tensor};
use qforge::synthetic::LlamaShape;
use std::sync::OnceLock;

fn shape() -> LlamaShape {
    LlamaShape {
        hidden: 256,
        intermediate: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 1000,
        tied: false,
        rope_factor: 8.0,
    }
}

/// One config.json per preset: the shape's config with the preset's `quantization_config`.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let presets = [
            Scheme::Fp8Dynamic,
            Scheme::Fp8Block,
            Scheme::W8A8,
            Scheme::W4A16Asym,
            Scheme::Nvfp4A16,
            Scheme::Mxfp4A16,
        ];
        presets
            .iter()
            .map(|s| {
                let plan = scheme_recipe(s.name(), &["lm_head".into()])
                    .unwrap()
                    .plan()
                    .unwrap();
                let mut c = shape().config();
                c["quantization_config"] = plan.quantization_config(&["lm_head".into()]);
                serde_json::to_vec_pretty(&c).unwrap()
            })
            .collect()
    })
}

fn tensors() -> Vec<Tensor> {
    shape()
        .tensors()
        .into_iter()
        .map(|t| Tensor {
            name: t.name,
            dtype: DType::BF16,
            shape: t.shape,
        })
        .collect()
}

proptest! {
    #![proptest_config(config(512, 1))]

    #[test]
    fn serving_config_mutations_end_cleanly(seed in any::<Index>(), m in mutation()) {
        let seeds = seeds();
        let json = mutate(&seeds[seed.index(seeds.len())], &m);
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) else {
            return Ok(());
        };
        match ServingModel::new(&value, tensors()) {
            Ok(model) => {
                for v in serving::check(&model, &[1, 2, 3, 4, 8, 16]) {
                    if let Some(f) = v.failure {
                        assert_one_line(&f.to_string());
                    }
                }
            }
            Err(e) => assert_one_line(&e.to_string()),
        }
    }
}
