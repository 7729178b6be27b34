//! The GEMV build a model's decode runs is picked at load (`runtime::cuda::tune`): timed
//! against the default build on the model itself, checked on its first Linear, kept only
//! when clearly faster; or named by `QFORGE_GEMV`. The choice rule and the parser on their
//! own; the tuning itself on the emulator (whose times are meaningless, so only what it
//! leaves behind is checked) and on a real GPU when present.

use crate::support;
use crate::support::cuda::devices;
use crate::support::requires;
use qforge::runtime::cuda::kernels::{
    pf_forms, GemvVariant, GEMV_DEFAULT, GEMV_EMULATED, GEMV_SWEEP,
};
use qforge::runtime::cuda::model::{load_cuda_on, CudaModel, CudaOptions};
use qforge::runtime::cuda::tune::{
    builds, choose, off_by_more_than_an_ulp, GemvPick, Trial, TuneSet, Tuning, MARGIN,
};

/// The emulated builds, one round: what these tests time when the choice must not matter.
const ONE_ROUND: TuneSet = TuneSet {
    first: GEMV_EMULATED,
    pf_round: false,
};
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
    // Near zero, 2^-8 of the reference's RMS is allowed besides the rounding.
    let b = [0.0, 2.0, -2.0, 2.0, -2.0];
    let floor = (16.0f32 / 5.0).sqrt() / 256.0;
    let with = |x: f32| [x, 2.0, -2.0, 2.0, -2.0];
    assert_eq!(off_by_more_than_an_ulp(&with(0.9 * floor), &b), 0);
    assert_eq!(off_by_more_than_an_ulp(&with(1.1 * floor), &b), 1);
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
    // Every build of the sweep, in each of its forms, and no two of the same name.
    let all: Vec<GemvVariant> = builds().collect();
    assert_eq!(all.len(), 3 * (1 + GEMV_SWEEP.len()));
    for &v in &all {
        assert_eq!(GemvPick::parse(&v.name()).unwrap(), GemvPick::Build(v));
    }
    assert_eq!(
        GemvPick::parse("4x4-cvt2-pf").unwrap(),
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

/// The model loaded again with `opts`, which must take `t`'s decision untimed.
fn load_again(label: &str, dir: &std::path::Path, opts: &CudaOptions, t: &Tuning) -> CudaModel {
    let again = load_cuda_on(support::cuda::same_device(label), dir, opts).unwrap();
    let kept = again.tuning.clone().expect("decided");
    assert!(kept.earlier, "{label}");
    assert_eq!(
        (kept.chosen, &kept.trials),
        (t.chosen, &t.trials),
        "{label}"
    );
    assert_eq!(again.gpu.gemv(), t.chosen, "{label}");
    again
}

#[requires(cuda_device)]
#[test]
fn tuning_at_load_leaves_a_checked_build_and_a_fresh_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let prompt: Vec<u32> = (0..9u32).map(|i| (i * 7919 + 13) % 49152).collect();
    for (label, g) in devices() {
        let opts = |gemv| CudaOptions {
            max_seq: Some(64),
            gemv: Some(gemv),
            ..CudaOptions::default()
        };
        let tune = opts(GemvPick::Tune(ONE_ROUND));
        // An earlier run's decision for this shape is forgotten first, so that this load
        // times the builds.
        let earlier = load_cuda_on(g, &dir, &tune).unwrap();
        let _ = std::fs::remove_file(earlier.tuning_file(ONE_ROUND));
        drop(earlier);
        let mut m = load_cuda_on(support::cuda::same_device(label), &dir, &tune).unwrap();
        let t = m.tuning.clone().expect("tuned");
        assert!(!t.earlier, "{label}: timed now");
        let builds: Vec<_> = t.trials.iter().map(|t| t.build).collect();
        let all = std::iter::once(GEMV_DEFAULT).chain(GEMV_EMULATED.iter().copied());
        assert_eq!(builds, all.collect::<Vec<_>>(), "{label}");
        for tr in &t.trials {
            assert!(tr.left_out.is_none(), "{label}: {tr:?}");
            assert!(tr.step_s.is_some_and(|s| s > 0.0), "{label}: {tr:?}");
        }
        assert_eq!(m.gpu.gemv(), t.chosen, "{label}: the chosen build runs");
        assert!(m.describe().contains(&t.describe()), "{}", m.describe());
        // The timed steps leave nothing behind: an empty cache and no graph of a build
        // that may not be the chosen one.
        assert_eq!(m.cached_len(), 0, "{label}");
        assert!(!m.graph_captured() && m.graphs(), "{label}");
        assert!(
            m.describe().contains("decode as a CUDA graph"),
            "{}",
            m.describe()
        );
        // The next load of this shape here takes the same decision, untimed.
        let again = load_again(label, &dir, &tune, &t);
        assert!(
            again.describe().contains("at an earlier load here"),
            "{}",
            again.describe()
        );
        drop(again);
        let (ids, logits) = decode(&mut m, &prompt, 8);
        // The same decode under each build named, untuned: the builds agree.
        for &v in builds.iter() {
            let g = support::cuda::same_device(label);
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
#[requires(emulator)]
#[test]
fn auto_keeps_the_default_build_on_the_emulator() {
    let g = support::cuda::emulator();
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let opts = CudaOptions {
        max_seq: Some(16),
        gemv: Some(GemvPick::Auto),
        ..CudaOptions::default()
    };
    let m = load_cuda_on(g, &dir, &opts).unwrap();
    assert!(m.tuning.is_none());
    assert_eq!(m.gpu.gemv(), GEMV_DEFAULT);
}

/// A build that cannot run (here one that does not compile) is left out of the tuning with
/// its reason, and the model loads with the default build: a tuning degrades, it does not
/// fail a load.
#[requires(cuda_device)]
#[test]
fn a_build_that_fails_is_left_out_and_the_model_loads() {
    static BROKEN: &[GemvVariant] = &[GemvVariant {
        warps: 4,
        unroll: 4,
        cvt: 7, // gemv.cu: #error "GEMV_CVT is 0, 1 or 2"
        pf: 0,
    }];
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    for (label, g) in devices() {
        let opts = CudaOptions {
            max_seq: Some(16),
            gemv: Some(GemvPick::Tune(TuneSet {
                first: BROKEN,
                pf_round: false,
            })),
            ..CudaOptions::default()
        };
        let mut m = load_cuda_on(g, &dir, &opts).unwrap();
        let t = m.tuning.clone().unwrap();
        assert_eq!(t.chosen, GEMV_DEFAULT, "{label}");
        assert_eq!(t.trials.len(), 2, "{label}");
        let broken = &t.trials[1];
        assert!(broken.step_s.is_none(), "{label}: {broken:?}");
        let why = broken.left_out.as_deref().unwrap_or_default();
        assert!(why.contains("GEMV_CVT"), "{label}: {why}");
        assert_eq!(m.gpu.gemv(), GEMV_DEFAULT, "{label}");
        assert!(m
            .forward(&[1, 2, 3], 0, false)
            .unwrap()
            .iter()
            .all(|x| x.is_finite()));
    }
}

/// A decode graph captured under one build is not replayed under another: after
/// `set_gemv` the next step captures anew (the old graph's kernels may be unloaded), and
/// decodes bit for bit as a model loaded with that build. (On this small model the builds'
/// sums happen to agree bit for bit too: the graph's build is what shows the difference.)
#[requires(cuda_device)]
#[test]
fn a_graph_is_captured_anew_under_another_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let prompt: Vec<u32> = (0..9u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let v = GEMV_EMULATED[0];
    for (label, g) in devices() {
        let opts = |gemv| CudaOptions {
            max_seq: Some(32),
            gemv: Some(GemvPick::Build(gemv)),
            ..CudaOptions::default()
        };
        let mut switched = load_cuda_on(g, &dir, &opts(GEMV_DEFAULT)).unwrap();
        decode(&mut switched, &prompt, 3);
        assert_eq!(switched.graph_gemv(), Some(GEMV_DEFAULT), "{label}");
        switched.gpu.set_gemv(v).unwrap();
        let (ids, logits) = decode(&mut switched, &prompt, 6);
        assert_eq!(switched.graph_gemv(), Some(v), "{label}");
        let mut fixed = load_cuda_on(support::cuda::same_device(label), &dir, &opts(v)).unwrap();
        let (ids_v, logits_v) = decode(&mut fixed, &prompt, 6);
        assert_eq!(ids, ids_v, "{label}");
        assert!(
            logits == logits_v,
            "{label}: the switched model decodes as {v}"
        );
    }
}

/// A kept decision belongs to one model shape and weight kind: FP8 and INT8 weights of the
/// same shape (the same bytes, other kernels) and other shapes are timed for themselves.
#[requires(emulator)]
#[test]
fn a_decision_is_kept_per_shape_and_weight_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = CudaOptions {
        max_seq: Some(16),
        gemv: Some(GemvPick::Build(GEMV_DEFAULT)),
        ..CudaOptions::default()
    };
    let file = |dir: &std::path::Path| {
        let m = load_cuda_on(support::cuda::emulator(), dir, &opts).unwrap();
        m.tuning_file(ONE_ROUND)
    };
    let fp8 = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    let int8 = support::quantize_bundled(tmp.path(), "w8a8");
    assert_eq!(file(&fp8), file(&fp8));
    assert_ne!(file(&fp8), file(&int8));
}

/// A tuning's second round times the forms of the first round's pick that fetch weights
/// under PDL, beside the pick, and the decision may be any build timed in either round.
/// (The emulator's times are meaningless, so the pick is whichever; what is checked is
/// that the second round follows from it.)
#[requires(cuda_device)]
#[test]
fn the_second_round_times_the_pdl_forms_of_the_pick() {
    static FIRST: &[GemvVariant] = &[GEMV_EMULATED[0]];
    let set = TuneSet {
        first: FIRST,
        pf_round: true,
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::quantize_bundled(tmp.path(), "fp8_dynamic");
    for (label, g) in devices() {
        let opts = CudaOptions {
            max_seq: Some(16),
            gemv: Some(GemvPick::Tune(set)),
            ..CudaOptions::default()
        };
        let earlier = load_cuda_on(g, &dir, &opts).unwrap();
        let file = earlier.tuning_file(set);
        assert_ne!(
            file,
            earlier.tuning_file(TuneSet {
                pf_round: false,
                ..set
            })
        );
        let _ = std::fs::remove_file(&file);
        drop(earlier);
        let m = load_cuda_on(support::cuda::same_device(label), &dir, &opts).unwrap();
        let t = m.tuning.clone().expect("tuned");
        let built: Vec<GemvVariant> = t.trials.iter().map(|t| t.build).collect();
        assert_eq!(
            built[..2],
            [GEMV_DEFAULT, FIRST[0]],
            "{label}: the first round"
        );
        // The second round: the two other forms of one of the first round's builds.
        let pick = built[2];
        assert!(
            built[..2].contains(&GemvVariant { pf: 0, ..pick }),
            "{label}: {built:?}"
        );
        let forms: Vec<GemvVariant> = pf_forms(pick).filter(|v| v.pf > 0).collect();
        assert_eq!(built[2..], forms[..], "{label}");
        for tr in &t.trials {
            assert!(tr.left_out.is_none(), "{label}: {tr:?}");
            assert!(tr.step_s.is_some_and(|s| s > 0.0), "{label}: {tr:?}");
        }
        assert!(built.contains(&t.chosen), "{label}");
        assert_eq!(m.gpu.gemv(), t.chosen, "{label}");
        // Kept and read back with the second round's builds.
        load_again(label, &dir, &opts, &t);
    }
}
