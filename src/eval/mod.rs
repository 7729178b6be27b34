//! `qforge eval`: lm-evaluation-harness-compatible tasks, perplexity and KL statistics of a
//! quantized model against its reference. See docs/eval.md for every rule and the lm_eval
//! file it comes from.

pub mod data;
pub mod metrics;
pub mod perplexity;
pub mod pyrandom;
pub mod report;
pub mod run;
pub mod score;
pub mod tasks;

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checkpoint::hub::HubConfig;
use crate::runtime::tokenizer::TextTokenizer;
use crate::runtime::{self, Device};
use crate::{Error, Result};
use data::DataSource;
use run::{Aggregate, LoadedTask, RunOptions, TaskResult};
use score::Session;

/// lm_eval's `DEFAULT_MAX_LENGTH` when the config names no context length.
pub const DEFAULT_MAX_LENGTH: usize = 2048;

/// What `qforge eval` runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub reference: Option<PathBuf>,
    pub tasks: String,
    pub num_fewshot: Option<usize>,
    pub limit: Option<usize>,
    pub device: Device,
    pub data_dir: Option<PathBuf>,
    /// Where Hub datasets come from without `--data-dir` (endpoint, cache, offline mode).
    pub hub: HubConfig,
    /// lm_eval's `max_length` model argument; `None`: from config.json.
    pub max_length: Option<usize>,
    pub log_samples: bool,
    pub progress: bool,
}

/// One model's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModelResults {
    pub model: String,
    pub max_length: usize,
    pub requests: u64,
    pub tokens_forwarded: u64,
    pub seconds: f64,
    pub aggregates: Vec<Aggregate>,
    pub tasks: Vec<TaskResult>,
}

/// Everything `qforge eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: ModelResults,
    pub reference: Option<ModelResults>,
    /// Requests cut on the left to fit the model (lm_eval truncates the same way).
    pub truncated_requests: usize,
}

/// Loads the tasks' documents, then scores them on the reference (if any) and the model.
pub fn evaluate(opts: &EvalOptions) -> Result<EvalReport> {
    let list = tasks::resolve(&opts.tasks)?;
    let run_opts = RunOptions {
        data: match &opts.data_dir {
            Some(dir) => DataSource::Dir(dir),
            None => DataSource::Hub(&opts.hub),
        },
        num_fewshot: opts.num_fewshot,
        limit: opts.limit,
        log_samples: opts.log_samples,
    };
    let loaded = run::load_tasks(&list, &run_opts)?;
    let tok = TextTokenizer::load(&opts.model)?;
    if let Some(r) = &opts.reference {
        check_same_tokenizer(&tok, &TextTokenizer::load(r)?, r)?;
    }
    let reference = match &opts.reference {
        Some(r) => Some(evaluate_model(r, &tok, &loaded, &run_opts, opts)?),
        None => None,
    };
    let model = evaluate_model(&opts.model, &tok, &loaded, &run_opts, opts)?;
    let truncated_requests = model.tasks.iter().map(|t| t.truncated).sum();
    Ok(EvalReport {
        model,
        reference,
        truncated_requests,
    })
}

/// Refuses a reference whose tokenizer differs: its log-likelihoods would be of other
/// token sequences.
pub fn check_same_tokenizer(a: &TextTokenizer, b: &TextTokenizer, b_dir: &Path) -> Result<()> {
    let same = a.vocab_size() == b.vocab_size()
        && a.inner().get_vocab(true) == b.inner().get_vocab(true)
        && a.bos_id() == b.bos_id()
        && a.eos_ids() == b.eos_ids();
    if same {
        return Ok(());
    }
    Err(Error::Eval(format!(
        "{}: the reference has another tokenizer than the model; their log-likelihoods would not compare",
        b_dir.display()
    )))
}

/// lm_eval's `resolve_max_length`: `n_positions`, `max_position_embeddings`, `n_ctx` of
/// config.json, else 2048.
pub fn max_length_of(dir: &Path) -> Result<usize> {
    let cfg = runtime::tokenizer::read_json_opt(&dir.join("config.json"))?;
    let found = cfg.as_ref().and_then(|c| {
        ["n_positions", "max_position_embeddings", "n_ctx"]
            .iter()
            .find_map(|k| c.get(*k).and_then(|v| v.as_u64()))
    });
    Ok(found.map_or(DEFAULT_MAX_LENGTH, |n| n as usize))
}

fn evaluate_model(
    dir: &Path,
    tok: &TextTokenizer,
    loaded: &[LoadedTask],
    run_opts: &RunOptions,
    opts: &EvalOptions,
) -> Result<ModelResults> {
    let max_length = match opts.max_length {
        Some(n) => n,
        None => max_length_of(dir)?,
    };
    let mut backend = runtime::load(dir, opts.device, Some(max_length))?;
    let total: u64 = loaded.iter().map(run::count_requests).sum();
    let bar = report::request_bar(&dir.display().to_string(), total, opts.progress);
    let mut session = Session::new(backend.as_mut(), tok, max_length);
    let start = Instant::now();
    let mut results = Vec::new();
    for lt in loaded {
        let r = run::run_task(&mut session, lt, run_opts, &mut |n| bar.inc(n))?;
        if r.truncated > 0 {
            eprintln!(
                "qforge: {}: {} requests longer than the model's {max_length} tokens were cut on the left, as lm_eval does",
                r.task, r.truncated
            );
        }
        results.push(r);
    }
    bar.finish_and_clear();
    Ok(ModelResults {
        model: dir.display().to_string(),
        max_length,
        requests: total,
        tokens_forwarded: session.forwarded,
        seconds: start.elapsed().as_secs_f64(),
        aggregates: run::aggregate(&results),
        tasks: results,
    })
}
