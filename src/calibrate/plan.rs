//! The memory plan of a calibrated run, worked out from config.json and the calibration
//! settings alone (no tensor or sample is read), so that `quantize --dry-run` can tell
//! before hours of work whether a run fits, and a real run prints it up front.
//!
//! Each figure follows what the code holds at its peak (see docs/calibration.md, "Memory
//! plan"); the total adds them all, so it is an upper bound of the resident memory beyond
//! the mmapped input pages.

use super::forward::{Dims, Proj, QUERY_BLOCK};
use super::gptq::{input_slot, F64_SOLVE_MAX_COLS, INPUT_SLOTS};
use crate::runtime::config::ModelConfig;
use crate::{Error, Result};
use std::fmt;

/// Bytes of an f32.
const F32: u64 = 4;
/// Bytes of a BF16 activation.
const BF16: u64 = 2;

/// The calibration work to plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub samples: usize,
    /// Tokens of the longest sample (`--max-seq-length`: samples are at most that long).
    pub tokens: usize,
    /// The recipe runs GPTQ (a Hessian per distinct Linear input, the solve's memory).
    pub gptq: bool,
    /// The recipe runs SmoothQuant (a second activation stream: two more copies).
    pub smoothquant: bool,
    /// The recipe runs AWQ: its caches and grid search.
    pub awq: Option<AwqWork>,
    /// Threads (rayon's pool): up to one sample a thread runs through a layer at once.
    pub threads: usize,
}

/// What AWQ (`calibrate::awq`) holds beside the activations. Its caches: at the end of a
/// layer's calibration pass, per sample, the input of every mapping's parent; during a
/// mapping's search, the parent's unquantized outputs on every sample (`tokens × hidden`).
/// They are BF16 in the activation store, so they spill with the activations. Its search:
/// the original balance weights and the fake-quantized copy being made (f32), and per thread
/// one parent forward (its buffers, the sample and its unquantized output widened to f32,
/// the bits read, the output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwqWork {
    /// Values per token one layer caches (the largest layer): `hidden` for q/k/v's input
    /// and gate/up's, the attention width for o_proj's, `intermediate` for down_proj's.
    pub cached_width: u64,
    /// The widest cached input (values per token).
    pub widest_input: u64,
    /// Elements of one mapping's balance weights held beside the layer's (the largest
    /// mapping): a copy of each, and one fake-quantized weight while it is made.
    pub balance_weights: u64,
    /// Threads the search runs the parent on (rayon's pool).
    pub threads: u64,
}

/// The RAM a run may use (`--max-memory`); activations beyond it spill to a scratch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: BudgetSource,
}

/// Where the budget comes from (the plan says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// `--max-memory`.
    Flag,
    /// The default: 3/4 of `MemAvailable` (`/proc/meminfo`) when the run starts.
    MemAvailable,
    /// No `/proc/meminfo` to read: nothing is spilled.
    Unknown,
}

impl Budget {
    /// `--max-memory SIZE`.
    pub fn flag(bytes: u64) -> Budget {
        Budget {
            bytes,
            source: BudgetSource::Flag,
        }
    }

    /// The default: 3/4 of the memory available now (the rest for the page cache of the
    /// mmapped weights, the scratch file and other processes).
    pub fn available() -> Budget {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        match mem_available(&meminfo) {
            Some(bytes) => Budget {
                bytes: bytes / 4 * 3,
                source: BudgetSource::MemAvailable,
            },
            None => Budget {
                bytes: u64::MAX,
                source: BudgetSource::Unknown,
            },
        }
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// Peak bytes of each part of a calibrated run (one decoder layer at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// One layer's seven Linear weights and two norms, widened to f32.
    pub layer_weights: u64,
    /// One copy of the activations: samples × tokens × hidden BF16.
    pub activations: u64,
    /// Copies of the activations alive at once (a layer's inputs and its outputs, per
    /// stream).
    pub activation_copies: u64,
    /// The activations do not fit the budget: they live in a scratch file, not in RAM.
    pub spill: bool,
    /// GPTQ's Hessians and working memory at the worst moment of a layer, the calibration
    /// pass or a Linear's solve (0 without GPTQ).
    pub gptq: u64,
    /// The Hessians alone at the end of the calibration pass (one per distinct input).
    pub hessians: u64,
    /// AWQ's cached parent inputs and outputs, BF16 (0 without AWQ): in RAM, or spilled with
    /// the activations.
    pub awq_cache: u64,
    /// AWQ's grid search beside its caches: balance weights and per-thread forwards.
    pub awq_search: u64,
    /// Samples run through a layer at once ([`super::Pipeline::parallel`]): one a thread,
    /// as many as the budget holds (first with the activations in RAM, else spilled).
    pub parallel: u64,
    /// The forward-pass buffers (`forward::Scratch`, the attention's scores) and the sample
    /// in f32 of each sample run at once; when more than one runs, also the hooks' tensors
    /// each records for its replay in sample order.
    pub forward_scratch: u64,
    /// The largest output tensor handed to the writer (a Linear's codes, at most 2 bytes a
    /// weight: BF16 fake-quantized values are held while the codes are made).
    pub writer: u64,
    pub budget: Budget,
}

impl MemoryPlan {
    pub fn new(config: &ModelConfig, work: &Workload, budget: Budget) -> MemoryPlan {
        let d = Dims::new(config);
        let (h, i) = (d.hidden as u64, d.inter as u64);
        let shapes = Proj::ALL.map(|p| {
            let (o, n) = d.shape(p);
            (o as u64, n as u64)
        });
        let weights: u64 = shapes.iter().map(|(o, n)| o * n).sum();
        let tokens = work.tokens as u64;
        let kv = (d.kv_heads * d.head_dim) as u64;
        let q = (d.heads * d.head_dim) as u64;
        // Scratch: n, q, k, v, a (attention out), o, g, u, each `tokens ×` its width; the
        // sample in f32 and its BF16 bits on their way to or from the store.
        let buffers = tokens * (h + q + kv + kv + q + h + i + i) * F32;
        // Beside them, one head's scores for a block of queries and a row of probabilities.
        let scores = (tokens.min(QUERY_BLOCK as u64) * tokens + tokens) * F32;
        let one_sample = buffers + tokens * h * (F32 + F32) + scores;
        // A recording: q/k/v's input, o_proj's, gate/up's, down_proj's, keys and values.
        let recording = tokens * (h + q + h + i + kv + kv) * F32;
        let forward = |parallel: u64| match parallel {
            0 | 1 => one_sample,
            p => p * (one_sample + recording),
        };
        let largest = shapes.iter().map(|(o, n)| o * n).max().unwrap_or(0);
        let (gptq, hessians) = if work.gptq {
            gptq_peak(&shapes, tokens)
        } else {
            (0, 0)
        };
        let streams = if work.smoothquant { 2 } else { 1 };
        let all_tokens = work.samples as u64 * tokens;
        let (awq_cache, awq_search) = match &work.awq {
            Some(a) => {
                let cache = all_tokens * (a.cached_width + h) * BF16;
                // The input and the unquantized output widened to f32, the bits each was
                // read through (4 bytes a value), the output made.
                let per_thread = buffers + tokens * (2 * a.widest_input + 3 * h) * F32;
                (cache, a.balance_weights * F32 + a.threads * per_thread)
            }
            None => (0, 0),
        };
        let mut plan = MemoryPlan {
            layer_weights: (weights + 2 * h) * F32,
            activations: work.samples as u64 * tokens * h * BF16,
            activation_copies: 2 * streams,
            spill: false,
            gptq,
            hessians,
            awq_cache,
            awq_search,
            parallel: 1,
            forward_scratch: forward(1),
            writer: largest * 2,
            budget,
        };
        let most = work.threads.min(work.samples).max(1) as u64;
        let fits = |plan: &mut MemoryPlan, p: u64, with_activations: bool| {
            plan.forward_scratch = forward(p);
            let spillable = if with_activations {
                plan.spillable()
            } else {
                0
            };
            plan.fixed() + spillable <= budget.bytes
        };
        plan.parallel = (1..=most)
            .rev()
            .find(|&p| fits(&mut plan, p, true))
            .or_else(|| (1..=most).rev().find(|&p| fits(&mut plan, p, false)))
            .unwrap_or(1);
        plan.forward_scratch = forward(plan.parallel);
        plan.spill = plan.fixed() + plan.spillable() > budget.bytes;
        plan
    }

    /// What may go to the scratch files: the activations and AWQ's caches.
    pub fn spillable(&self) -> u64 {
        self.activations * self.activation_copies + self.awq_cache
    }

    /// Every part but the activations: what must be in RAM whatever the budget.
    pub fn fixed(&self) -> u64 {
        self.layer_weights + self.gptq + self.awq_search + self.forward_scratch + self.writer
    }

    /// The sum of every part in RAM: the most the run holds at once.
    pub fn total(&self) -> u64 {
        match self.spill {
            true => self.fixed(),
            false => self.fixed() + self.spillable(),
        }
    }

    /// Bytes the scratch files take on disk (0 when the activations are in RAM).
    pub fn scratch_file_bytes(&self) -> u64 {
        match self.spill {
            true => self.spillable(),
            false => 0,
        }
    }

    /// Refuses a budget that cannot hold even the parts that cannot spill.
    pub fn check(&self) -> Result<()> {
        if self.fixed() <= self.budget.bytes {
            return Ok(());
        }
        Err(Error::Calibration(format!(
            "the calibration needs {} of RAM besides the activations (layer weights, GPTQ, \
             AWQ search, forward scratch, writer: see the memory plan) but the budget is {} \
             ({}); raise --max-memory or use a machine with more memory",
            gb(self.fixed()),
            gb(self.budget.bytes),
            self.budget.source.describe()
        )))
    }
}

impl BudgetSource {
    fn describe(&self) -> &'static str {
        match self {
            BudgetSource::Flag => "--max-memory",
            BudgetSource::MemAvailable => "3/4 of MemAvailable; --max-memory to change",
            BudgetSource::Unknown => "MemAvailable unknown; --max-memory to set one",
        }
    }
}

/// GPTQ's worst moment, as `layer::Observers` and `gptq::quantize_weight` hold memory. The
/// calibration pass holds one Hessian (cols² f32) per distinct input (q/k/v share one,
/// gate/up another: `gptq::input_slot`), and while a sample is added, its `XᵀX` (cols²) and
/// the scaled input (tokens × cols). Then the Linears are solved in [`Proj::ALL`] order; a
/// Hessian is dropped by the last Linear that reads it once it is in faer's matrix. A
/// solve holds the weight in f32 (rows × cols) and at most 3 × cols² (the inverse of the
/// Cholesky factor: the factor, the inverse and faer's scratch), in f64 (6 × cols² f32's
/// worth) up to `F64_SOLVE_MAX_COLS` columns; then the upper factor of
/// the inverse (cols²), the weight and the propagated errors (2 × rows × cols f32); at the
/// end the weight and its unpermuted copy (2 × rows × cols f32). Returns (the peak, the
/// Hessians alone).
fn gptq_peak(shapes: &[(u64, u64); 7], tokens: u64) -> (u64, u64) {
    let square = |n: u64| n * n * F32;
    let mut slots = [0u64; INPUT_SLOTS];
    let mut last = [0usize; INPUT_SLOTS];
    for (k, (p, &(_, n))) in Proj::ALL.iter().zip(shapes).enumerate() {
        slots[input_slot(*p)] = square(n);
        last[input_slot(*p)] = k;
    }
    let hessians: u64 = slots.iter().sum();
    let widest = shapes.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let pass = hessians + square(widest) + tokens * widest * F32;
    let mut peak = pass;
    for (k, &(o, n)) in shapes.iter().enumerate() {
        let alive: u64 = (0..INPUT_SLOTS)
            .filter(|&s| last[s] > k)
            .map(|s| slots[s])
            .sum();
        let w = o * n * F32;
        let factor = if n as usize <= F64_SOLVE_MAX_COLS {
            6
        } else {
            3
        };
        let solve = (factor * square(n) + w).max(square(n) + 2 * w).max(2 * w);
        peak = peak.max(alive + solve);
    }
    (peak, hessians)
}

/// Decimal gigabytes with two decimals (as `df -H` and disk vendors count); megabytes
/// below one gigabyte.
fn gb(bytes: u64) -> String {
    match bytes {
        0..=999_999_999 => format!("{:.2} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let budget = match self.budget.source {
            BudgetSource::Unknown => "no budget".to_string(),
            s => format!("budget {} ({})", gb(self.budget.bytes), s.describe()),
        };
        writeln!(f, "memory plan (peak, upper bound; {budget}):")?;
        writeln!(f, "  layer weights (f32)      {}", gb(self.layer_weights))?;
        let place = match self.spill {
            true => "spilled to a scratch file, one sample in RAM",
            false => "in RAM",
        };
        writeln!(
            f,
            "  activations (BF16)       {} x {} copies, {place}",
            gb(self.activations),
            self.activation_copies
        )?;
        if self.gptq > 0 {
            writeln!(
                f,
                "  GPTQ Hessians + solve    {} (Hessians alone {})",
                gb(self.gptq),
                gb(self.hessians)
            )?;
        }
        if self.awq_cache > 0 {
            let place = match self.spill {
                true => "spilled to a scratch file, one sample a thread in RAM",
                false => "in RAM",
            };
            writeln!(
                f,
                "  AWQ caches (BF16)        {}, {place}",
                gb(self.awq_cache)
            )?;
            writeln!(f, "  AWQ search               {}", gb(self.awq_search))?;
        }
        writeln!(
            f,
            "  forward scratch          {} ({} sample{} at once)",
            gb(self.forward_scratch),
            self.parallel,
            if self.parallel == 1 { "" } else { "s" }
        )?;
        writeln!(f, "  writer                   {}", gb(self.writer))?;
        write!(f, "  total in RAM             {}", gb(self.total()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The g128 fixture's shape (`fixtures/schemes/g128-bf16/config.json`).
    fn g128() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 8,
            "num_key_value_heads": 2, "head_dim": 32, "num_hidden_layers": 2,
            "vocab_size": 32000, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "max_position_embeddings": 8192
        });
        ModelConfig::from_json(&json).unwrap()
    }

    fn ample() -> Budget {
        Budget::flag(1 << 40)
    }

    fn work(gptq: bool) -> Workload {
        Workload {
            samples: 32,
            tokens: 64,
            gptq,
            smoothquant: false,
            awq: None,
            threads: 1,
        }
    }

    #[test]
    fn g128_plan_matches_the_numbers_worked_out_by_hand() {
        let p = MemoryPlan::new(&g128(), &work(true), ample());
        // 8 heads × 32 = 256 wide attention: q 256×128, o 128×256; k, v 64×128; gate, up
        // 384×128; down 128×384; two norms of 128.
        assert_eq!(
            p.layer_weights,
            (2 * 32768 + 2 * 8192 + 3 * 49152 + 256) * 4
        );
        // BF16 activations: 2 bytes a value.
        assert_eq!(p.activations, 32 * 64 * 128 * 2);
        assert_eq!((p.activation_copies, p.spill), (2, false));
        // One Hessian per distinct input: q/k/v's and gate/up's 128², o_proj's 256²,
        // down_proj's 384².
        assert_eq!(p.hessians, (2 * 128 * 128 + 256 * 256 + 384 * 384) * 4);
        // Worst moment: down_proj's solve (its Hessian already dropped), 3 × 384² f64 while
        // the inverse is made, and the weight in f32.
        assert_eq!(p.gptq, 3 * 384 * 384 * 8 + 128 * 384 * 4);
        // n 128, q 256, k 64, v 64, a 256, o 128, g 384, u 384 per token; the sample in
        // f32 and its bits; one head's 64 × 64 scores (64 queries at a time) and a row of
        // 64 probabilities.
        assert_eq!(
            p.forward_scratch,
            64 * 1664 * 4 + 64 * 128 * 8 + (4096 + 64) * 4
        );
        assert_eq!(p.parallel, 1);
        assert_eq!(p.writer, 49152 * 2);
        assert_eq!(p.fixed(), 5_260_544);
        assert_eq!(p.total(), 5_260_544 + 2 * 524_288);
        assert!(p.check().is_ok());
    }

    #[test]
    fn samples_run_in_parallel_as_the_budget_allows() {
        let one = 64 * 1664 * 4 + 64 * 128 * 8 + (4096 + 64) * 4;
        // What each of several samples also records: 128 + 256 + 128 + 384 + 64 + 64 values
        // a token.
        let two = 2 * (one + 64 * 1024 * 4);
        let mut w = work(true);
        w.threads = 2;
        let p = MemoryPlan::new(&g128(), &w, ample());
        assert_eq!((p.parallel, p.forward_scratch), (2, two));
        assert_eq!(p.fixed(), 5_260_544 - one + two);
        // A budget that holds two samples only if the activations spill: one sample, in RAM.
        let tight = Budget::flag(5_260_544 + 2 * 524_288);
        let p = MemoryPlan::new(&g128(), &w, tight);
        assert_eq!((p.parallel, p.spill), (1, false));
        // A budget that holds the activations beside no forward: spilled, two samples.
        let spilled = Budget::flag(5_260_544 - one + two);
        let p = MemoryPlan::new(&g128(), &w, spilled);
        assert_eq!((p.parallel, p.spill), (2, true));
        assert!(p.to_string().contains("(2 samples at once)"), "{p}");
        // No more samples at once than there are samples.
        w.samples = 1;
        assert_eq!(MemoryPlan::new(&g128(), &w, ample()).parallel, 1);
    }

    #[test]
    fn without_gptq_there_are_no_hessians() {
        let p = MemoryPlan::new(&g128(), &work(false), ample());
        assert_eq!((p.gptq, p.hessians), (0, 0));
        assert_eq!(p.total(), 5_260_544 - 3_735_552 + 2 * 524_288);
    }

    #[test]
    fn smoothquant_keeps_a_second_stream() {
        let mut w = work(false);
        w.smoothquant = true;
        let p = MemoryPlan::new(&g128(), &w, ample());
        assert_eq!(p.activation_copies, 4);
    }

    #[test]
    fn activations_spill_when_they_do_not_fit_the_budget() {
        let fits = MemoryPlan::new(&g128(), &work(true), Budget::flag(5_260_544 + 1_048_576));
        assert!(!fits.spill);
        let p = MemoryPlan::new(&g128(), &work(true), Budget::flag(5_260_544 + 1_048_575));
        assert!(p.spill);
        assert_eq!(p.total(), 5_260_544);
        assert_eq!(p.scratch_file_bytes(), 1_048_576);
        assert!(p.check().is_ok());
        assert!(p.to_string().contains("spilled to a scratch file"), "{p}");
    }

    #[test]
    fn a_budget_below_the_parts_that_cannot_spill_is_refused() {
        let p = MemoryPlan::new(&g128(), &work(true), Budget::flag(5_260_543));
        let e = p.check().unwrap_err().to_string();
        assert!(
            e.contains("needs 5.26 MB") && e.contains("budget is 5.26 MB"),
            "{e}"
        );
        assert!(e.contains("--max-memory") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn mem_available_is_read_in_kibibytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
        let b = Budget::available();
        if std::path::Path::new("/proc/meminfo").exists() {
            assert_eq!(b.source, BudgetSource::MemAvailable);
            assert!(b.bytes > 0);
        }
    }

    /// The llama-70b shape and 512 samples of 2048 tokens on 2 threads.
    fn llama_70b_512x2048(gptq: bool, awq: Option<AwqWork>) -> (ModelConfig, Workload) {
        let shape = crate::synthetic::named_shape("llama-70b").unwrap();
        let config = ModelConfig::from_json(&shape.config()).unwrap();
        let work = Workload {
            samples: 512,
            tokens: 2048,
            gptq,
            smoothquant: false,
            awq,
            threads: 2,
        };
        (config, work)
    }

    #[test]
    fn llama_70b_plan_with_512_samples_of_2048_tokens_fits_16_gb() {
        let (config, work) = llama_70b_512x2048(true, None);
        let p = MemoryPlan::new(&config, &work, Budget::flag(16_000_000_000));
        // 512 × 2048 × 8192 BF16 per copy: too much for the budget, so they spill.
        assert_eq!(p.activations, 17_179_869_184);
        assert!(p.spill);
        // down_proj's solve dominates GPTQ: 3 × 28672² f32 and its weight.
        assert_eq!(p.gptq, 3 * 28672 * 28672 * 4 + 8192 * 28672 * 4);
        // One sample at a time: a second one's buffers and recording (1.36 GB) do not fit.
        assert_eq!(p.parallel, 1);
        assert_eq!(p.total(), 15_586_099_200 + (64 * 2048 + 2048) * 4);
        assert!(p.check().is_ok());
        let text = p.to_string();
        assert!(text.contains("total in RAM             15.59 GB"), "{text}");
    }

    /// AWQ on the llama-70b shape, 512 × 2048 tokens, 2 threads, worked out by hand: the
    /// default mappings cache q/k/v's, gate/up's and down_proj's inputs (8192 + 8192 + 28672
    /// values a token; v→o is skipped: 8 KV heads) and the parent's outputs (8192), BF16;
    /// the search holds the gate/up mapping's weights and one up_proj copy, and per thread
    /// a parent forward.
    #[test]
    fn llama_70b_awq_plan_counts_its_caches_and_spills_them() {
        let awq = AwqWork {
            cached_width: 45056,
            widest_input: 28672,
            balance_weights: 3 * 28672 * 8192,
            threads: 2,
        };
        let (config, work) = llama_70b_512x2048(false, Some(awq));
        let p = MemoryPlan::new(&config, &work, Budget::flag(16_000_000_000));
        let tokens = 512 * 2048;
        assert_eq!(p.awq_cache, tokens * (45056 + 8192) * 2);
        assert_eq!(p.awq_cache, 111_669_149_696);
        // n, q, k, v, a, o, g, u: 92160 f32 a token; the input (28672), the output and the
        // unquantized output (8192 each) in f32, and the bits of the two read.
        let per_thread = 2048 * 92160 * 4 + 2048 * (2 * 28672 + 3 * 8192) * 4;
        assert_eq!(p.awq_search, 3 * 28672 * 8192 * 4 + 2 * per_thread);
        assert_eq!(p.awq_search, 5_670_699_008);
        // Layer weights 3.42 GB, writer 0.47 GB beside; two samples at once (the
        // activations spill anyway), each with 0.89 GB of buffers (and 0.5 MB of scores for
        // 64 queries) and a 0.45 GB recording of 8192 + 8192 + 8192 + 28672 + 1024 + 1024
        // values a token.
        assert_eq!(p.parallel, 2);
        let one = 2048 * 92160 * 4 + 2048 * 8192 * 8 + (64 * 2048 + 2048) * 4;
        assert_eq!(p.forward_scratch, 2 * (one + 2048 * 55296 * 4));
        assert_eq!(p.fixed(), 10_452_271_104 - 889_192_448 + p.forward_scratch);
        assert!(p.spill);
        assert_eq!(p.total(), p.fixed());
        assert_eq!(p.scratch_file_bytes(), 2 * 17_179_869_184 + 111_669_149_696);
        assert!(p.check().is_ok());
        let text = p.to_string();
        assert!(
            text.contains("AWQ caches (BF16)        111.67 GB, spilled to a scratch file"),
            "{text}"
        );
        assert!(text.contains("AWQ search               5.67 GB"), "{text}");
        // Below the parts that cannot spill even with one sample at a time: refused.
        let p = MemoryPlan::new(&config, &work, Budget::flag(10_000_000_000));
        assert_eq!(p.parallel, 1);
        let e = p.check().unwrap_err().to_string();
        assert!(
            e.contains("needs 10.45 GB") && e.contains("AWQ search"),
            "{e}"
        );
    }
}
