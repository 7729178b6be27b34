//! Which build of `kernels/gemv.cu` a model's decode GEMVs run ([`GemvPick`]). By default,
//! on a GPU, the one that runs this model's decode step fastest there: the default build
//! and each tuning build of `kernels::GEMV_SWEEP` are timed on the model itself at load
//! (about ten decode steps each), as Triton autotunes; then the forms of the fastest that
//! fetch weights under PDL (`kernels::pf_forms`), beside it, in a second round. The two
//! rounds time 9 builds instead of the 21 of every combination. The best build depends on
//! the GPU (SMs, registers, HBM latency) and on the model's shapes, so it is measured, not
//! assumed; a first run also compiles the builds (NVRTC, in parallel, then cached). Before
//! it is timed, each build's output of the model's first Linear is checked against the
//! default build's; a build that fails is left out, never the load. The decision is kept in the
//! kernel cache folder ([`CudaModel::tuning_file`]): later loads of a model of the same
//! shape on the same GPU take it untimed, so that timing noise cannot make two runs decode
//! differently.

use super::kernels::{self, pf_forms, GemvVariant, GEMV_DEFAULT, GEMV_SWEEP};
use super::model::CudaModel;
use crate::runtime::Backend;
use crate::{Error, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Instant;

/// How the GEMV build is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvPick {
    /// [`TuneSet::AUTO`] on a GPU; the default build on the emulator, whose times mean
    /// nothing.
    Auto,
    /// Time these builds against the default one and keep the fastest (also on the emulator).
    Tune(TuneSet),
    /// This build, untimed.
    Build(GemvVariant),
}

/// What a tuning times: the default build and `first` in a first round; with `pf_round`,
/// then the [`pf_forms`] of the first round's pick not timed yet, beside the pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TuneSet {
    pub first: &'static [GemvVariant],
    pub pf_round: bool,
}

impl TuneSet {
    /// A GPU's tuning at load.
    pub const AUTO: TuneSet = TuneSet {
        first: GEMV_SWEEP,
        pf_round: true,
    };
}

/// Every build a [`GemvPick::Build`] may name, and a tuning may pick: the default one and
/// those of `GEMV_SWEEP`, each in its [`pf_forms`].
pub fn builds() -> impl Iterator<Item = GemvVariant> {
    std::iter::once(GEMV_DEFAULT)
        .chain(GEMV_SWEEP.iter().copied())
        .flat_map(pf_forms)
}

impl GemvPick {
    /// `QFORGE_GEMV`: `auto` (the default), `default`, or a build by its
    /// [`GemvVariant::name`] (`8x4`, `4x4-cvt1`, …).
    pub fn from_env() -> Result<GemvPick> {
        GemvPick::parse(std::env::var("QFORGE_GEMV").as_deref().unwrap_or(""))
    }

    /// See [`GemvPick::from_env`].
    pub fn parse(s: &str) -> Result<GemvPick> {
        match s {
            "" | "auto" => Some(GemvPick::Auto),
            "default" => Some(GemvPick::Build(GEMV_DEFAULT)),
            _ => builds().find(|v| v.name() == s).map(GemvPick::Build),
        }
        .ok_or_else(|| {
            let all: Vec<String> = builds().map(GemvVariant::name).collect();
            Error::Runtime(format!(
                "QFORGE_GEMV={s}: expected auto, default or one of {} (warps x chunks[-cvtN][-pf|-pf2])",
                all.join(", ")
            ))
        })
    }
}

/// One build's outcome in a tuning: its decode step time, or why it was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub build: GemvVariant,
    pub step_s: Option<f64>,
    pub left_out: Option<String>,
}

/// What [`GemvPick`] chose, and the trials behind it (empty when not tuned).
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    pub chosen: GemvVariant,
    pub trials: Vec<Trial>,
    /// Read from the decision of an earlier load of a model of this shape on this GPU
    /// ([`CudaModel::tuning_file`]) instead of timed now.
    pub earlier: bool,
}

impl Tuning {
    /// For [`Backend::describe`].
    pub fn describe(&self) -> String {
        let time = |v: GemvVariant| {
            let t = self.trials.iter().find(|t| t.build == v);
            t.and_then(|t| t.step_s)
        };
        let timed = self.trials.iter().filter(|t| t.step_s.is_some()).count();
        let when = if self.earlier {
            "at an earlier load "
        } else {
            ""
        };
        match (time(GEMV_DEFAULT), time(self.chosen)) {
            (Some(_), Some(_)) if self.chosen == GEMV_DEFAULT => format!(
                "gemv {} (no other of {timed} builds timed {when}here was {:.0}% faster)",
                self.chosen,
                (MARGIN - 1.0) * 100.0
            ),
            (Some(d), Some(c)) => format!(
                "gemv {} (fastest of {timed} builds timed {when}here: {:.3}x the default's decode speed)",
                self.chosen,
                d / c
            ),
            _ => format!("gemv {}", self.chosen),
        }
    }
}

/// How much faster than the default build another build must be to replace it: closer
/// than that, timing noise would decide.
pub const MARGIN: f64 = 1.02;

/// The fastest timed build, not left out, if it beats the default build's time by
/// [`MARGIN`]; else the default build.
pub fn choose(trials: &[Trial]) -> GemvVariant {
    let kept = || trials.iter().filter(|t| t.left_out.is_none());
    let timed = || kept().filter_map(|t| Some((t.build, t.step_s?)));
    let Some(default) = timed().find(|t| t.0 == GEMV_DEFAULT).map(|t| t.1) else {
        return GEMV_DEFAULT;
    };
    let best = timed().min_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((v, t)) if t * MARGIN <= default => v,
        _ => GEMV_DEFAULT,
    }
}

/// Outputs of `a` more than one BF16 rounding away from `b`'s (NaN counts): the builds sum
/// K in other orders, so their f32 sums may round to neighbouring BF16 values. A sum near
/// zero, where cancellation makes that order matter more, may also be 2⁻⁸ of `b`'s RMS off.
pub fn off_by_more_than_an_ulp(a: &[f32], b: &[f32]) -> usize {
    let sq: f64 = b.iter().map(|&y| (y as f64) * (y as f64)).sum();
    let floor = ((sq / b.len().max(1) as f64).sqrt() / 256.0) as f32;
    let far = |(x, y): (&f32, &f32)| {
        let (d, ulp) = ((x - y).abs(), x.abs().max(y.abs()) / 128.0);
        d.is_nan() || d > ulp + floor
    };
    a.iter().zip(b).filter(|&p| far(p)).count()
}

/// A decision [`write_decision`] kept, if `file` holds one naming known builds.
fn read_decision(file: &std::path::Path) -> Option<Tuning> {
    let v: Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    let build = |n: &Value| builds().find(|b| Some(b.name().as_str()) == n.as_str());
    let mut trials = Vec::new();
    for t in v["trials"].as_array()? {
        trials.push(Trial {
            build: build(&t["build"])?,
            step_s: t["step_s"].as_f64(),
            left_out: t["left_out"].as_str().map(String::from),
        });
    }
    Some(Tuning {
        chosen: build(&v["chosen"])?,
        trials,
        earlier: true,
    })
}

/// Keeps `t` in `file` (through a sibling and a rename); a folder that cannot be written
/// only costs the next load a new timing.
fn write_decision(file: &std::path::Path, t: &Tuning) {
    let trials: Vec<Value> = (t.trials.iter())
        .map(|t| json!({"build": t.build.name(), "step_s": t.step_s, "left_out": t.left_out}))
        .collect();
    let text = json!({"chosen": t.chosen.name(), "trials": trials}).to_string();
    let tmp = file.with_extension("json.partial");
    let _ = (file.parent().map(std::fs::create_dir_all).transpose())
        .and_then(|_| std::fs::write(&tmp, text))
        .and_then(|_| std::fs::rename(&tmp, file));
}

/// The token the timed steps decode.
const TOKEN: u32 = 0;
/// Timing rounds over all builds (each build's best round counts), and the least time
/// and fewest steps a build is timed for in a round.
const ROUNDS: usize = 2;
const ROUND_S: f64 = 0.05;
const MIN_STEPS: usize = 3;

impl CudaModel {
    /// Sets the GEMV build `pick` asks for (see the module docs); the model is left reset,
    /// with no graph captured.
    pub(super) fn pick_gemv(&mut self, pick: GemvPick) -> Result<()> {
        let builds = match pick {
            GemvPick::Build(v) => {
                self.gpu.set_gemv(v)?;
                self.tuning = Some(Tuning {
                    chosen: v,
                    trials: Vec::new(),
                    earlier: false,
                });
                return Ok(());
            }
            GemvPick::Auto if self.gpu.is_emulated() => return Ok(()),
            GemvPick::Auto => TuneSet::AUTO,
            GemvPick::Tune(set) => set,
        };
        // The same choice at every load of a model of this shape here: timing noise must
        // not make two runs decode differently (nor cost each load the timing).
        let file = self.tuning_file(builds);
        if let Some(t) = read_decision(&file) {
            if self.gpu.set_gemv(t.chosen).is_ok() {
                self.tuning = Some(t);
                return Ok(());
            }
        }
        let state = self.graph_state();
        let res = self.tune(builds);
        // Whatever happened, no step of a tuning build stays cached or captured (the
        // graph dropped before its build, as in `tune`), and a build whose capture failed
        // has not turned graphs or PDL off for the model.
        self.reset();
        self.restore_graph_state(state);
        let tuning = match res {
            Ok(t) => t,
            Err(e) => {
                self.gpu.set_gemv(GEMV_DEFAULT)?;
                return Err(e);
            }
        };
        self.gpu.set_gemv(tuning.chosen)?;
        write_decision(&file, &tuning);
        self.tuning = Some(tuning);
        Ok(())
    }

    /// Where the decision of a tuning of `builds` is kept for models of this one's
    /// shape and weight kinds on this GPU, with these kernel sources: the kernel cache
    /// folder (`QFORGE_KERNEL_CACHE`). Delete it to time the builds again.
    pub fn tuning_file(&self, builds: TuneSet) -> std::path::PathBuf {
        let mut h = Sha256::new();
        let i = &self.gpu.info;
        h.update(format!("{} {} {}\n", i.name, i.arch, i.driver_version));
        for (name, src) in kernels::SOURCES.iter().chain(kernels::HEADERS) {
            h.update(format!("{name} {}\n", src.len()));
            h.update(src);
        }
        for v in builds.first {
            h.update(format!("{}\n", v.name()));
        }
        h.update(format!("pf round {}\n", builds.pf_round));
        let w = &self.weights;
        // Shape, kind (FP8 and INT8 weigh the same but run other kernels) and bytes.
        let mut shape = |l: &super::device_weights::DLinear| {
            let kind = std::mem::discriminant(&l.w);
            h.update(format!("{} {} {kind:?} {}\n", l.n, l.k, l.weight_bytes()));
        };
        if let Some(l) = w.layers.first() {
            for lin in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                shape(lin);
            }
        }
        shape(w.lm_head());
        h.update(format!("layers {}", w.layers.len()));
        let key: String = h
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        kernels::cache_dir().join(format!("gemv-tuning-{key}.json"))
    }

    fn tune(&mut self, builds: TuneSet) -> Result<Tuning> {
        // The graph goes before the build it runs: unloading a module a live graph uses
        // is not documented as safe.
        self.recapture();
        self.gpu.set_gemv(GEMV_DEFAULT)?;
        self.gpu.prepare_gemv(builds.first);
        self.forward_sync(&[TOKEN], 0)?; // fills the activation buffers the check reads
        let reference = self.first_linear()?;
        let mut trials = vec![Trial {
            build: GEMV_DEFAULT,
            step_s: None,
            left_out: None,
        }];
        self.add_trials(&mut trials, builds.first, &reference);
        let all: Vec<usize> = (0..trials.len()).collect();
        self.time_rounds(&mut trials, &all)?;
        if builds.pf_round {
            let pick = choose(&trials);
            let forms: Vec<GemvVariant> = pf_forms(pick)
                .filter(|&v| trials.iter().all(|t| t.build != v))
                .collect();
            if !forms.is_empty() {
                self.gpu.prepare_gemv(&forms);
                let from = trials.len();
                self.add_trials(&mut trials, &forms, &reference);
                // The pick is timed again beside its forms, so that one moment's clocks
                // and temperature do not decide between the rounds.
                let at = trials.iter().position(|t| t.build == pick);
                let second: Vec<usize> = at.into_iter().chain(from..trials.len()).collect();
                self.time_rounds(&mut trials, &second)?;
            }
        }
        Ok(Tuning {
            chosen: choose(&trials),
            trials,
            earlier: false,
        })
    }

    /// Trials of `builds` (other than the default), each left out if its first Linear
    /// differs from `reference`.
    fn add_trials(&mut self, trials: &mut Vec<Trial>, builds: &[GemvVariant], reference: &[f32]) {
        for &v in builds.iter().filter(|&&v| v != GEMV_DEFAULT) {
            let left_out = (self.check_build(v, reference)).unwrap_or_else(|e| Some(e.to_string()));
            trials.push(Trial {
                build: v,
                step_s: None,
                left_out,
            });
        }
    }

    /// Times the trials at `which` in [`ROUNDS`] rounds, each keeping its best time. A
    /// build that fails is left out; only the default build's failure is the model's.
    /// Every other round runs the builds last to first, so that no build is always timed
    /// first (clocks ramping up) or last.
    fn time_rounds(&mut self, trials: &mut [Trial], which: &[usize]) -> Result<()> {
        for round in 0..ROUNDS {
            let mut order = which.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let t = &mut trials[i];
                if t.left_out.is_some() {
                    continue;
                }
                match self.time_steps(t.build) {
                    Ok(s) => t.step_s = Some(t.step_s.map_or(s, |best| best.min(s))),
                    Err(e) if t.build == GEMV_DEFAULT => return Err(e),
                    Err(e) => (t.step_s, t.left_out) = (None, Some(e.to_string())),
                }
            }
        }
        Ok(())
    }

    /// Why build `v` must not run this model (its first Linear's output differs from
    /// `reference`, the default build's), or None.
    fn check_build(&mut self, v: GemvVariant, reference: &[f32]) -> Result<Option<String>> {
        self.gpu.set_gemv(v)?;
        let out = self.first_linear();
        self.gpu.set_gemv(GEMV_DEFAULT)?;
        let off = off_by_more_than_an_ulp(&out?, reference);
        Ok((off > 0).then(|| {
            format!("{off} outputs of the first Linear > 1 bf16 ulp off the default build's")
        }))
    }

    /// Layer 0's qkv Linear on the activations in the scratch buffers, one row, as f32.
    fn first_linear(&mut self) -> Result<Vec<f32>> {
        let Some(layer) = self.weights.layers.first() else {
            return Ok(Vec::new());
        };
        let (g, s) = (&self.gpu, &self.scratch);
        self.gemm
            .linear(g, &layer.qkv, &s.act, (1, 0), s.qkv.ptr, false)?;
        g.download_bf16(s.qkv.ptr, layer.qkv.n)
    }

    /// Seconds per decode step under build `v`: one step to capture its graph, one replay
    /// to size the run, then as many as fill [`ROUND_S`] (at least [`MIN_STEPS`]).
    fn time_steps(&mut self, v: GemvVariant) -> Result<f64> {
        self.recapture();
        self.gpu.set_gemv(v)?;
        self.forward_sync(&[TOKEN], 0)?;
        let t0 = Instant::now();
        self.forward_sync(&[TOKEN], 0)?;
        let one = t0.elapsed().as_secs_f64();
        let steps = ((ROUND_S / one.max(1e-6)) as usize).clamp(MIN_STEPS, 200);
        let t0 = Instant::now();
        for _ in 0..steps {
            self.forward_sync(&[TOKEN], 0)?;
        }
        Ok(t0.elapsed().as_secs_f64() / steps as f64)
    }
}
