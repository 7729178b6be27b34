//! Runs tasks on one model: few-shot prompts (lm_eval's sampler), requests through the
//! [`Session`], per-document metrics, aggregation.

use super::data::{load_split, DataSource};
use super::metrics::{self, GSM8K_FLEXIBLE, GSM8K_STRICT};
use super::pyrandom::PyRandom;
use super::score::Session;
use super::tasks::{self, Family, Kind, Sampler, Target, Task};
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// lm_eval's `fewshot_random_seed` default.
pub const FEWSHOT_SEED: u64 = 1234;
/// `generate_until`'s `max_gen_toks` (HFLM default).
pub const MAX_GEN_TOKS: usize = 256;
/// gsm8k.yaml `generation_kwargs.until`.
const GSM8K_UNTIL: [&str; 3] = ["Question:", "</s>", "<|im_end|>"];

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    /// `--data-dir`, else the Hub.
    pub data: DataSource<'a>,
    pub num_fewshot: Option<usize>,
    pub limit: Option<usize>,
    /// Keep every request's log-likelihood in the results (`--log-samples`).
    pub log_samples: bool,
}

/// One task's documents, loaded once for every model.
#[derive(Debug, Clone)]
pub struct LoadedTask {
    pub task: Task,
    pub docs: Vec<Value>,
    pub fewshot: Vec<Value>,
}

/// Loads the documents of every task (all errors before any model runs).
pub fn load_tasks(list: &[Task], opts: &RunOptions) -> Result<Vec<LoadedTask>> {
    if opts.limit == Some(0) {
        return Err(Error::Eval(
            "--limit 0 evaluates no document: give at least 1".into(),
        ));
    }
    list.iter()
        .map(|t| {
            let mut docs = load_split(opts.data, t.dataset, t.eval_split)?;
            if let Some(n) = opts.limit {
                docs.truncate(n);
            }
            let shots = opts.num_fewshot.unwrap_or(t.num_fewshot);
            let fewshot = match shots {
                0 => Vec::new(),
                _ => load_split(opts.data, t.dataset, t.fewshot_split)?,
            };
            let need = shots + usize::from(t.exclude_self);
            if shots > 0 && fewshot.len() < need {
                return Err(Error::Dataset(format!(
                    "{}: {shots}-shot needs {need} documents in the {} split, it has {}",
                    t.name,
                    t.fewshot_split,
                    fewshot.len()
                )));
            }
            if docs.is_empty() {
                return Err(Error::Dataset(format!(
                    "{}: the {} split is empty",
                    t.name, t.eval_split
                )));
            }
            Ok(LoadedTask {
                task: t.clone(),
                docs,
                fewshot,
            })
        })
        .collect()
}

/// Requests of one task (for the progress bar): loglikelihood requests per choice,
/// one per generation.
pub fn count_requests(t: &LoadedTask) -> u64 {
    t.docs
        .iter()
        .map(|d| match t.task.family.prepare(d) {
            Ok(p) if t.task.family == Family::Winogrande => p.text.len() as u64,
            Ok(p) if t.task.family.kind() == Kind::MultipleChoice => p.choices.len() as u64,
            _ => 1,
        })
        .sum()
}

/// One document's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DocResult {
    pub doc_id: usize,
    /// Metric values in [`Family::metrics`] order.
    pub metrics: Vec<f64>,
    /// Per request: (log-likelihood, is_greedy); empty for generation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loglikelihoods: Vec<(f64, bool)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

/// One task's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub family: &'static str,
    pub num_fewshot: usize,
    pub docs: Vec<DocResult>,
    /// Requests whose prompt was cut on the left to fit the model.
    pub truncated: usize,
}

/// Runs one task on `session`; `tick` is called after each request.
pub fn run_task(
    s: &mut Session,
    lt: &LoadedTask,
    opts: &RunOptions,
    tick: &mut dyn FnMut(u64),
) -> Result<TaskResult> {
    let t = &lt.task;
    let shots = opts.num_fewshot.unwrap_or(t.num_fewshot);
    let mut rng = PyRandom::new(FEWSHOT_SEED);
    let mut out = TaskResult {
        task: t.name.clone(),
        family: t.family.group(),
        num_fewshot: shots,
        docs: Vec::new(),
        truncated: 0,
    };
    for (doc_id, doc) in lt.docs.iter().enumerate() {
        let p = t.family.prepare(doc).map_err(|e| context(t, doc_id, e))?;
        let prefix = fewshot_prefix(t, lt, doc, shots, &mut rng)?;
        let mut r = DocResult {
            doc_id,
            metrics: Vec::new(),
            loglikelihoods: Vec::new(),
            generation: None,
        };
        match t.family.kind() {
            Kind::MultipleChoice => {
                for (ctx, cont) in tasks::requests(&p, &prefix) {
                    let enc = s.encode_pair(&ctx, &cont)?;
                    out.truncated += usize::from(s.truncates(&enc));
                    let sc = s.loglikelihood(&enc)?;
                    r.loglikelihoods.push((sc.ll, sc.is_greedy));
                    tick(1);
                }
                r.metrics = mc_metrics(t.family, &p, &r.loglikelihoods);
            }
            Kind::Generate => {
                let ctx = format!("{prefix}{}", p.text[0]);
                let text = s.generate_until(&ctx, &GSM8K_UNTIL, MAX_GEN_TOKS)?;
                tick(1);
                let Target::Text(reference) = &p.target else {
                    return Err(Error::Eval("gsm8k needs a text answer".into()));
                };
                r.metrics = gsm8k_metrics(&text, reference);
                r.generation = Some(text);
            }
        }
        if !opts.log_samples {
            r.loglikelihoods.clear();
            r.generation = None;
        }
        out.docs.push(r);
    }
    Ok(out)
}

fn context(t: &Task, doc_id: usize, e: Error) -> Error {
    Error::Dataset(format!("{} document {doc_id}: {e}", t.name).replace("dataset: ", ""))
}

/// The description and few-shot examples before a document's own text.
fn fewshot_prefix(
    t: &Task,
    lt: &LoadedTask,
    doc: &Value,
    shots: usize,
    rng: &mut PyRandom,
) -> Result<String> {
    let mut prefix = t.description.clone();
    if shots == 0 {
        return Ok(prefix);
    }
    let picked: Vec<usize> = match t.sampler {
        Sampler::FirstN => (0..shots).collect(),
        Sampler::Random if t.exclude_self => rng
            .sample(lt.fewshot.len(), shots + 1)
            .into_iter()
            .filter(|&i| lt.fewshot[i] != *doc)
            .take(shots)
            .collect(),
        Sampler::Random => rng.sample(lt.fewshot.len(), shots),
    };
    for i in picked {
        let p = t
            .family
            .prepare(&lt.fewshot[i])
            .map_err(|e| context(t, i, e))?;
        prefix.push_str(&tasks::fewshot_example(t.family, &p)?);
    }
    Ok(prefix)
}

fn mc_metrics(family: Family, p: &tasks::Prepared, lls: &[(f64, bool)]) -> Vec<f64> {
    let ll: Vec<f64> = lls.iter().map(|x| x.0).collect();
    let gold = match p.target {
        Target::Index(i) => i,
        Target::Text(_) => 0,
    };
    match family {
        Family::TruthfulqaMc2 => vec![metrics::mc2(&ll, &p.labels)],
        Family::Winogrande | Family::Mmlu => {
            vec![if metrics::argmax(&ll) == gold {
                1.0
            } else {
                0.0
            }]
        }
        _ => {
            let (acc, norm) = metrics::acc_and_norm(&ll, &p.choices, gold);
            vec![acc, norm]
        }
    }
}

fn gsm8k_metrics(generation: &str, reference: &str) -> Vec<f64> {
    static RE: std::sync::LazyLock<(regex::Regex, regex::Regex)> = std::sync::LazyLock::new(|| {
        (
            regex::Regex::new(GSM8K_STRICT).expect("valid regex"),
            regex::Regex::new(GSM8K_FLEXIBLE).expect("valid regex"),
        )
    });
    let strict = metrics::regex_extract(&RE.0, generation, false);
    let flexible = metrics::regex_extract(&RE.1, generation, true);
    vec![
        metrics::gsm8k_exact_match(&strict, reference),
        metrics::gsm8k_exact_match(&flexible, reference),
    ]
}

/// A metric of a task or group, aggregated.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Aggregate {
    pub task: String,
    pub metric: String,
    pub value: f64,
    pub stderr: Option<f64>,
    pub n: usize,
    pub num_fewshot: usize,
}

/// Mean and stderr per task and metric; MMLU's subjects also as the `mmlu` group (weighted
/// by size, pooled stderr: `aggregate_subtask_metrics`, `pooled_sample_stderr`).
pub fn aggregate(results: &[TaskResult]) -> Vec<Aggregate> {
    let mut out = Vec::new();
    let mut mmlu: Vec<(f64, f64, usize)> = Vec::new();
    let mut mmlu_shots = 0;
    for r in results {
        let family = tasks::GROUPS
            .iter()
            .position(|g| *g == r.family)
            .unwrap_or(0);
        let metric_names = family_of(family).metrics();
        for (m, name) in metric_names.iter().enumerate() {
            let xs: Vec<f64> = r.docs.iter().map(|d| d.metrics[m]).collect();
            let agg = Aggregate {
                task: r.task.clone(),
                metric: name.to_string(),
                value: metrics::mean(&xs),
                stderr: metrics::mean_stderr(&xs),
                n: xs.len(),
                num_fewshot: r.num_fewshot,
            };
            if r.family == "mmlu" {
                mmlu.push((agg.value, agg.stderr.unwrap_or(0.0), agg.n));
                mmlu_shots = r.num_fewshot;
            }
            out.push(agg);
        }
    }
    if !mmlu.is_empty() {
        let n: usize = mmlu.iter().map(|m| m.2).sum();
        let value = mmlu.iter().map(|m| m.0 * m.2 as f64).sum::<f64>() / n as f64;
        let parts: Vec<(f64, usize)> = mmlu.iter().map(|m| (m.1, m.2)).collect();
        out.push(Aggregate {
            task: "mmlu".into(),
            metric: "acc".into(),
            value,
            stderr: metrics::pooled_stderr(&parts),
            n,
            num_fewshot: mmlu_shots,
        });
    }
    out
}

fn family_of(i: usize) -> Family {
    [
        Family::ArcChallenge,
        Family::Hellaswag,
        Family::Winogrande,
        Family::Mmlu,
        Family::TruthfulqaMc2,
        Family::Gsm8k,
    ][i]
}
