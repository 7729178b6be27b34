//! The GEMV build a model's decode runs is picked at load (`runtime::cuda::tune`): timed
//! against the default build on the model itself, checked on its first Linear, kept only
//! when clearly faster; or named by `QFORGE_GEMV`. The choice rule and the parser on their
//! own; the tuning itself on the emulator (whose times are meaningless, so only what it
//! leaves behind is checked) and on a real GPU when present.
#![cfg(feature = "cuda")]

mod common;
mod cuda_util;

use cuda_util::devices;
use qforge::runtime::cuda::forward::{load_cuda_on, CudaModel, CudaOptions};
use qforge::runtime::cuda::kernels::{GemvVariant, GEMV_DEFAULT, GEMV_EMULATED, GEMV_SWEEP};
use qforge::runtime::cuda::tune::{choose, off_by_more_than_an_ulp, GemvPick, Trial, MARGIN};
use qforge::runtime::Backend;

fn trial(build: GemvVariant, step_s: Option<f64>) -> Trial {
    let left_out = step_s.is_none().then(|| "outputs differ".to_string());
    Trial {
        build,
        step_s,
        left_out,
    }
}

#[test]
fn a_build_replaces_the_default_only_when_clearly_faster() {
    let (a, b) = (GEMV_SWEEP[0], GEMV_SWEEP[1]);
    let d = 10.0e-3;
    let pick = |ta: Option<f64>, tb: Option<f64>| {
        choose(&[trial(GEMV_DEFAULT, Some(d)), trial(a, ta), trial(b, tb)])
    };
    assert_eq!(
        pick(Some(11e-3), Some(12e-3)),
        GEMV_DEFAULT,
        "default fastest"
    );
    // Within the margin: noise, the default stays.
    assert_eq!(pick(Some(d / MARGIN * 1.001), None), GEMV_DEFAULT);
    assert_eq!(pick(Some(d / MARGIN * 0.999), None), a);
    assert_eq!(pick(Some(9.0e-3), Some(8.0e-3)), b, "the fastest of two");
    // A build left out (its outputs differ) is never chosen, however fast it timed.
    let left_out = Trial {
        left_out: Some("outputs differ".into()),
        ..trial(a, Some(1e-3))
    };
    assert_eq!(
        choose(&[trial(GEMV_DEFAULT, Some(d)), left_out]),
        GEMV_DEFAULT
    );
    // Nothing to compare against: the default.
    assert_eq!(choose(&[trial(a, Some(1e-3))]), GEMV_DEFAULT);
    assert_eq!(choose(&[]), GEMV_DEFAULT);
}

#[test]
fn outputs_one_bf16_rounding_apart_agree() {
    let one_ulp = 1.0 + 1.0 / 128.0;
    assert_eq!(off_by_more_than_an_ulp(&[1.0, -2.0], &[one_ulp, -2.0]), 0);
    assert_eq!(off_by_more_than_an_ulp(&[1.0, -2.0], &[1.02, 2.0]), 2);
    assert_eq!(
        off_by_more_than_an_ulp(&[f32::NAN, 0.0], &[f32::NAN, 0.0]),
        1
    );
}

#[test]
fn qforge_gemv_names_a_build() {
    assert_eq!(GemvPick::parse("").unwrap(), GemvPick::Auto);
    assert_eq!(GemvPick::parse("auto").unwrap(), GemvPick::Auto);
    assert_eq!(
        GemvPick::parse("default").unwrap(),
        GemvPick::Build(GEMV_DEFAULT)
    );
    assert_eq!(
        GemvPick::parse("4x4").unwrap(),
        GemvPick::Build(GEMV_DEFAULT)
    );
    for &v in GEMV_SWEEP {
        assert_eq!(GemvPick::parse(&v.name()).unwrap(), GemvPick::Build(v));
    }
    assert_eq!(
        GemvPick::parse("4x4-cvt2").unwrap(),
        GemvPick::Build(GEMV_EMULATED[1])
    );
    let e = GemvPick::parse("3x3").unwrap_err().to_string();
    assert!(
        e.contains("QFORGE_GEMV=3x3") && e.contains("8x4") && e.lines().count() == 1,
        "{e}"
    );
}

/// Greedy ids and logits of `steps` decode steps after `prompt`.
fn decode(m: &mut CudaModel, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<f32>) {
    m.reset();
    let mut logits = m.forward(prompt, 0, false).unwrap();
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    for s in 0..steps {
        let id = qforge::runtime::sampler::argmax(&logits);
        ids.push(id);
        logits = m.forward(&[id], prompt.len() + s, false).unwrap();
        all.extend_from_slice(&logits);
    }
    (ids, all)
}

fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn tuning_at_load_leaves_a_checked_build_and_a_fresh_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::quantize_bundled(tmp.path(), "fp8_dynamic");
    let prompt: Vec<u32> = (0..9u32).map(|i| (i * 7919 + 13) % 49152).collect();
    for (label, g) in devices() {
        let opts = |gemv| CudaOptions {
            max_seq: Some(64),
            gemv: Some(gemv),
            ..CudaOptions::default()
        };
        let mut m = load_cuda_on(g, &dir, &opts(GemvPick::Tune(GEMV_EMULATED))).unwrap();
        let t = m.tuning.clone().expect("tuned");
        let builds: Vec<_> = t.trials.iter().map(|t| t.build).collect();
        let all = std::iter::once(GEMV_DEFAULT).chain(GEMV_EMULATED.iter().copied());
        assert_eq!(builds, all.collect::<Vec<_>>(), "{label}");
        for tr in &t.trials {
            assert!(tr.left_out.is_none(), "{label}: {tr:?}");
            assert!(tr.step_s.is_some_and(|s| s > 0.0), "{label}: {tr:?}");
        }
        assert_eq!(t.chosen, choose(&t.trials), "{label}");
        assert_eq!(m.gpu.gemv(), t.chosen, "{label}: the chosen build runs");
        assert!(m.describe().contains(&t.describe()), "{}", m.describe());
        // The timed steps leave nothing behind: an empty cache and no graph of a build
        // that may not be the chosen one.
        assert_eq!(m.cached_len(), 0, "{label}");
        assert!(!m.graph_captured(), "{label}");
        let (ids, logits) = decode(&mut m, &prompt, 8);
        // The same decode under each build named, untuned: the builds agree.
        for &v in builds.iter() {
            let g = cuda_util::same_device(label);
            let mut fixed = load_cuda_on(g, &dir, &opts(GemvPick::Build(v))).unwrap();
            assert_eq!(fixed.gpu.gemv(), v, "{label}");
            assert!(fixed.describe().contains(&format!("gemv {v}")), "{label}");
            let (ids_v, logits_v) = decode(&mut fixed, &prompt, 8);
            assert_eq!(ids_v, ids, "{label} {v}");
            let rel = rel_rms(&logits_v, &logits);
            assert!(rel < 1e-2, "{label} {v}: logits rel rms {rel}");
        }
    }
}

/// `GemvPick::Auto` (QFORGE_GEMV unset) does not tune on the emulator, whose times mean
/// nothing: the default build runs, untuned.
#[test]
fn auto_keeps_the_default_build_on_the_emulator() {
    let Some(g) = cuda_util::emulator() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::quantize_bundled(tmp.path(), "fp8_dynamic");
    let opts = CudaOptions {
        max_seq: Some(16),
        gemv: Some(GemvPick::Auto),
        ..CudaOptions::default()
    };
    let m = load_cuda_on(g, &dir, &opts).unwrap();
    assert!(m.tuning.is_none());
    assert_eq!(m.gpu.gemv(), GEMV_DEFAULT);
}
