//! Which build of `kernels/gemv.cu` a model's decode GEMVs run ([`GemvPick`]). By default,
//! on a GPU, the one that runs this model's decode step fastest there: the default build
//! and each tuning build of `kernels::GEMV_SWEEP` are timed on the model itself at load
//! (about ten decode steps each), as Triton autotunes. The best build depends on the GPU
//! (SMs, registers, HBM latency) and on the model's shapes, so it is measured, not assumed;
//! a first run also compiles the builds (NVRTC, then cached). Before it is timed, each build's
//! output of the model's first Linear is checked against the default build's.

use super::forward::CudaModel;
use super::kernels::{GemvVariant, GEMV_DEFAULT, GEMV_SWEEP};
use crate::runtime::Backend;
use crate::{Error, Result};
use std::time::Instant;

/// How the GEMV build is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvPick {
    /// Time the default build and every `GEMV_SWEEP` build on a GPU and keep the fastest;
    /// the default build on the emulator, whose times mean nothing.
    Auto,
    /// Time these builds against the default one and keep the fastest (also on the emulator).
    Tune(&'static [GemvVariant]),
    /// This build, untimed.
    Build(GemvVariant),
}

/// Every build a [`GemvPick::Build`] may name: the default one first.
pub fn builds() -> impl Iterator<Item = GemvVariant> {
    std::iter::once(GEMV_DEFAULT).chain(GEMV_SWEEP.iter().copied())
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
                "QFORGE_GEMV={s}: expected auto, default or one of {} (warps x chunks[-cvtN])",
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
}

impl Tuning {
    /// For [`Backend::describe`].
    pub fn describe(&self) -> String {
        let time = |v: GemvVariant| {
            let t = self.trials.iter().find(|t| t.build == v);
            t.and_then(|t| t.step_s)
        };
        let timed = self.trials.iter().filter(|t| t.step_s.is_some()).count();
        match (time(GEMV_DEFAULT), time(self.chosen)) {
            (Some(_), Some(_)) if self.chosen == GEMV_DEFAULT => format!(
                "gemv {} (no other of {timed} builds timed here was {:.0}% faster)",
                self.chosen,
                (MARGIN - 1.0) * 100.0
            ),
            (Some(d), Some(c)) => format!(
                "gemv {} (fastest of {timed} builds timed here: {:.3}x the default's decode speed)",
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
/// K in other orders, so their f32 sums may round to neighbouring BF16 values.
pub fn off_by_more_than_an_ulp(a: &[f32], b: &[f32]) -> usize {
    let far = |(x, y): (&f32, &f32)| {
        let (d, ulp) = ((x - y).abs(), x.abs().max(y.abs()) / 128.0);
        d.is_nan() || d > ulp
    };
    a.iter().zip(b).filter(|&p| far(p)).count()
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
                });
                return Ok(());
            }
            GemvPick::Auto if self.gpu.is_emulated() => return Ok(()),
            GemvPick::Auto => GEMV_SWEEP,
            GemvPick::Tune(b) => b,
        };
        let res = self.tune(builds);
        // Whatever happened, no step of a tuning build stays cached or captured (the
        // graph dropped before its build, as in `tune`).
        self.reset();
        self.recapture();
        let tuning = match res {
            Ok(t) => t,
            Err(e) => {
                self.gpu.set_gemv(GEMV_DEFAULT)?;
                return Err(e);
            }
        };
        self.gpu.set_gemv(tuning.chosen)?;
        self.tuning = Some(tuning);
        Ok(())
    }

    fn tune(&mut self, builds: &[GemvVariant]) -> Result<Tuning> {
        // The graph goes before the build it runs: unloading a module a live graph uses
        // is not documented as safe.
        self.recapture();
        self.gpu.set_gemv(GEMV_DEFAULT)?;
        self.gpu.prepare_gemv(builds);
        self.forward_sync(&[TOKEN], 0)?; // fills the activation buffers the check reads
        let reference = self.first_linear()?;
        let mut trials = vec![Trial {
            build: GEMV_DEFAULT,
            step_s: None,
            left_out: None,
        }];
        for &v in builds.iter().filter(|&&v| v != GEMV_DEFAULT) {
            let left_out = match self.check_build(v, &reference) {
                Ok(None) => None,
                Ok(Some(why)) => Some(why),
                Err(e) => Some(e.to_string()),
            };
            trials.push(Trial {
                build: v,
                step_s: None,
                left_out,
            });
        }
        for _ in 0..ROUNDS {
            for t in trials.iter_mut().filter(|t| t.left_out.is_none()) {
                let s = self.time_steps(t.build)?;
                t.step_s = Some(t.step_s.map_or(s, |best| best.min(s)));
            }
        }
        Ok(Tuning {
            chosen: choose(&trials),
            trials,
        })
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
        let n = layer.qkv.n;
        self.gemm
            .linear(g, &layer.qkv, &s.act, (1, 0), s.qkv.ptr, false)?;
        let mut raw = vec![0u8; n * 2];
        g.download(s.qkv.ptr, &mut raw)?;
        Ok(raw
            .chunks_exact(2)
            .map(|p| half::bf16::from_le_bytes([p[0], p[1]]).to_f32())
            .collect())
    }

    /// Seconds per decode step under build `v`: one step to capture its graph, then as many
    /// as fill [`ROUND_S`] (at least [`MIN_STEPS`]).
    fn time_steps(&mut self, v: GemvVariant) -> Result<f64> {
        self.recapture();
        self.gpu.set_gemv(v)?;
        let t0 = Instant::now();
        self.forward_sync(&[TOKEN], 0)?;
        let first = t0.elapsed().as_secs_f64();
        let steps = ((ROUND_S / first.max(1e-6)) as usize).clamp(MIN_STEPS, 200);
        let t0 = Instant::now();
        for _ in 0..steps {
            self.forward_sync(&[TOKEN], 0)?;
        }
        Ok(t0.elapsed().as_secs_f64() / steps as f64)
    }
}
