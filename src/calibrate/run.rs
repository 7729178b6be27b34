//! `qforge quantize --dataset`: a calibrated recipe end to end. The output layout is known
//! from the plan before any data is computed; tensors that calibration does not touch are
//! copied first, then each layer's tensors are written the moment the pipeline has them.

use super::awq::{Awq, AwqCalibrator};
use super::forward::{Dims, Proj};
use super::gptq::GptqOptions;
use super::layer::LayerCalibrator;
use super::outputs::LinearPlan;
use super::plan::{AwqWork, Budget, MemoryPlan, Workload};
use super::smoothquant::{self, SmoothQuant};
use super::torch_dot::TorchCpu;
use super::{LayerTensor, Pipeline};
use crate::checkpoint::writer::{self, OutTensor, ShardWriter};
use crate::checkpoint::{Checkpoint, DType};
use crate::dataset::{self, CalibrationSpec};
use crate::output::{self, Staging};
use crate::progress::progress_bar;
use crate::quantize::{self, state_dict_cmp, QuantizeJob, Summary};
use crate::recipe::{arch, CalibStep, QuantPlan};
use crate::runtime::config::ModelConfig;
use crate::{Error, Result};
use std::collections::HashMap;
use std::time::Instant;

/// The memory plan of calibrating `job.model_dir` with `job.recipe` on `data` within
/// `budget`, from config.json and the settings alone: no tensor and no sample is read
/// (`--dry-run`).
pub fn memory_plan(
    job: &QuantizeJob,
    data: &CalibrationSpec,
    budget: Budget,
) -> Result<MemoryPlan> {
    let recipe = job.recipe.load()?;
    let steps = recipe.calibration();
    let gptq = gptq_options(&steps, TorchCpu::default())?.is_some();
    let smoothquant = steps
        .iter()
        .any(|s| matches!(s, CalibStep::SmoothQuant { .. }));
    let path = job.model_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Calibration(format!("{}: {e}", path.display())))?;
    let config = ModelConfig::from_json(&json)?;
    let work = Workload {
        samples: data.num_samples,
        tokens: data.max_seq_length,
        gptq,
        smoothquant,
        awq: awq_work(&steps, &config)?,
        threads: rayon::current_num_threads(),
    };
    Ok(MemoryPlan::new(&config, &work, budget))
}

/// The recipe's AWQ steps: (mappings, duo scaling, grid points).
fn awq_steps(
    steps: &[CalibStep],
) -> impl Iterator<Item = (&Vec<crate::recipe::Mapping>, crate::recipe::DuoScaling, u64)> {
    steps.iter().filter_map(|s| match s {
        CalibStep::Awq {
            mappings,
            duo_scaling,
            n_grid,
        } => Some((mappings, *duo_scaling, *n_grid)),
        _ => None,
    })
}

/// AWQ's part of the plan: its mappings resolved on a Llama layer's module names (the
/// checkpoint is not read), every Linear counted as quantized (an upper bound).
fn awq_work(steps: &[CalibStep], config: &ModelConfig) -> Result<Option<AwqWork>> {
    let Some((mappings, duo, n_grid)) = awq_steps(steps).next() else {
        return Ok(None);
    };
    let names = smoothquant::llama_tensors(config.num_layers);
    let dims = Dims::new(config);
    let awq = Awq::resolve(
        duo,
        n_grid,
        mappings,
        &names,
        &dims,
        config.num_layers,
        |_, _| true,
    )?;
    Ok(Some(awq.memory(&dims, rayon::current_num_threads() as u64)))
}

/// Quantizes `job.model_dir` with the calibrated recipe `job.recipe`, calibrating on `data`,
/// within the default memory budget ([`Budget::available`]), rounding as torch on an AVX2
/// CPU.
pub fn quantize_calibrated(job: &QuantizeJob, data: &CalibrationSpec) -> Result<Summary> {
    quantize_calibrated_within(job, data, Budget::available(), TorchCpu::default())
}

/// [`quantize_calibrated`] within `budget`, rounding as torch on `cpu`: refused up front if
/// the parts of the memory plan that cannot spill exceed the budget; the activations spill
/// to a scratch file in the output's temporary folder if they do not fit beside them.
pub fn quantize_calibrated_within(
    job: &QuantizeJob,
    data: &CalibrationSpec,
    budget: Budget,
    cpu: TorchCpu,
) -> Result<Summary> {
    let start = Instant::now();
    let memory = memory_plan(job, data, budget)?;
    memory.check()?;
    output::check_not_input(&job.output, &job.model_dir)?;
    let recipe = job.recipe.load()?;
    let steps = recipe.calibration();
    let gptq = gptq_options(&steps, cpu)?;
    let plan = recipe.plan()?;
    let ck = Checkpoint::open(&job.model_dir)?;
    let config = ModelConfig::from_json(&ck.config)?;
    let mut layout = Layout::new(&ck, &config, &plan)?;
    let smooth = smoothquant_plan(&steps, &ck, &config, &layout)?;
    if let Some(sq) = &smooth {
        // Smoothed tensors are written by the layer step, not copied.
        let rewritten = sq.rewritten(|l, p| layout.plans[l][p as usize].is_some());
        layout.copied.retain(|n| !rewritten.contains(n));
    }
    let awq = awq_plan(&steps, &ck, &config, &layout, &plan)?;
    if let Some(a) = &awq {
        let rewritten = a.rewritten(|l, p| layout.plans[l][p as usize].is_some());
        check_bf16(&ck, &rewritten, "AWQ")?;
        layout.copied.retain(|n| !rewritten.contains(n));
    }
    if gptq.is_some()
        && layout
            .plans
            .iter()
            .flatten()
            .flatten()
            .any(|p| !p.weights.symmetric)
    {
        return Err(Error::Unsupported(
            "GPTQ with asymmetric weights is not supported by the calibration pipeline yet".into(),
        ));
    }
    let set = dataset::load_calibration(data, &job.model_dir)?;
    set.check_vocab(config.vocab_size)?;
    let mut warnings = set.warnings.clone();

    let staging = Staging::new(&job.output, job.force)?;
    let shards = writer::plan_shards(&layout.tensors, job.max_shard_bytes);
    let tensor_bytes: u64 = shards.iter().map(|s| s.data_bytes()).sum();
    staging.ensure_space(tensor_bytes + memory.scratch_file_bytes())?;
    let writers = shards
        .iter()
        .map(|s| ShardWriter::create(&staging.path().join(&s.file_name), s))
        .collect::<Result<Vec<_>>>()?;
    let shard_of: HashMap<String, usize> = shards
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.tensors.iter().map(move |t| (t.name.clone(), i)))
        .collect();
    for name in &layout.copied {
        let t = ck.get(name).expect("listed from the checkpoint");
        writers[shard_of[name]].write_tensor(name, ck.data(t))?;
        ck.release(t);
    }

    let max_seq = set.samples.iter().map(Vec::len).max().unwrap_or(0);
    let mut pipe = Pipeline::new(&ck, &config, max_seq)
        .parallel(memory.parallel as usize)
        .torch_cpu(cpu);
    if memory.spill {
        pipe = pipe.spill_to(staging.path());
    }
    let mut acts = pipe.embed(&set.samples)?;
    // Each stream runs every layer, and every layer but the last again when it propagates
    // changed weights (GPTQ; SmoothQuant's own stream always).
    let stream = |propagates: bool| {
        if propagates {
            2 * config.num_layers - 1
        } else {
            config.num_layers
        }
    };
    let searches: usize = awq.as_ref().map_or(0, |a| {
        (0..config.num_layers)
            .map(|l| AwqCalibrator::passes_per_layer(a, l))
            .sum()
    });
    let passes = stream(gptq.is_some() || awq.is_some())
        + smooth.as_ref().map_or(0, |_| stream(true))
        + searches;
    let total = (passes * set.samples.len()) as u64;
    let bar = progress_bar("calibrating", total, job.progress);
    let expected: HashMap<&str, &OutTensor> = layout
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut sink = |t: LayerTensor| -> Result<()> {
        match expected.get(t.name.as_str()) {
            Some(o) if o.dtype == t.dtype && o.shape == t.shape => {
                writers[shard_of[&t.name]].write_tensor(&t.name, &t.data)
            }
            _ => Err(Error::Calibration(format!(
                "{} ({} {:?}) was not planned",
                t.name,
                t.dtype.name(),
                t.shape
            ))),
        }
    };
    let mut cal = LayerCalibrator::new(
        layout.plans.clone(),
        plan.kv_cache_scheme.is_some(),
        gptq,
        &mut sink,
    );
    let progress = |n| bar.inc(n);
    match (&smooth, &awq) {
        (Some(sq), _) => {
            cal.smooth = smooth.clone();
            smoothquant::run_two_streams(&pipe, sq, &mut acts, &mut cal, &progress)?;
        }
        (None, Some(a)) => {
            warnings.extend(a.warnings.iter().cloned());
            let mut c = AwqCalibrator::new(a, cal, &pipe, &acts, &progress);
            pipe.run(&mut acts, &mut c, &progress)?;
            warnings.append(&mut c.warnings);
            cal = c.inner;
        }
        (None, None) => pipe.run(&mut acts, &mut cal, &progress)?,
    }
    bar.finish_and_clear();
    super::forward::print_timings();
    warnings.append(&mut cal.warnings);
    drop(cal);
    for w in writers {
        w.finish()?;
    }
    quantize::write_side_files(
        &staging,
        &shards,
        &ck,
        &plan,
        &layout.ignored,
        &recipe,
        &job.model_dir,
    )?;
    finish(staging, &layout, &shards, &ck, start, warnings)
}

fn finish(
    staging: Staging,
    layout: &Layout,
    shards: &[writer::ShardPlan],
    ck: &Checkpoint,
    start: Instant,
    warnings: Vec<String>,
) -> Result<Summary> {
    let dir = staging.path().to_path_buf();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let output_bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let output = staging.commit()?;
    Ok(Summary {
        output,
        files,
        tensors: layout.tensors.len(),
        quantized: layout.plans.iter().flatten().flatten().count(),
        ignored: layout.ignored.clone(),
        input_bytes: ck.total_bytes(),
        output_bytes,
        output_tensor_bytes: shards.iter().map(|s| s.data_bytes()).sum(),
        seconds: start.elapsed().as_secs_f64(),
        warnings,
    })
}

/// GPTQ's options when the recipe has a GPTQ step, reproducing `cpu`'s arithmetic; other
/// calibrated steps beyond static observers are refused here.
fn gptq_options(steps: &[CalibStep], cpu: TorchCpu) -> Result<Option<GptqOptions>> {
    let mut gptq = None;
    for s in steps {
        match s {
            CalibStep::Gptq {
                block_size,
                dampening_frac,
                ..
            } => {
                gptq = Some(GptqOptions {
                    block_size: *block_size as usize,
                    dampening_frac: dampening_frac.unwrap_or(0.0),
                    actorder: false,
                    cpu,
                })
            }
            CalibStep::StaticObservers => {}
            CalibStep::SmoothQuant { .. } => {}
            CalibStep::Awq { .. } => {}
        }
    }
    Ok(gptq)
}

/// SmoothQuant's plan, resolved on the model's modules (refusals before any work).
fn smoothquant_plan(
    steps: &[CalibStep],
    ck: &Checkpoint,
    config: &ModelConfig,
    layout: &Layout,
) -> Result<Option<SmoothQuant>> {
    let mut smooth = None;
    for s in steps {
        if let CalibStep::SmoothQuant {
            strength,
            mappings,
            ignore,
        } = s
        {
            if smooth.is_some() {
                return Err(Error::Unsupported(
                    "more than one SmoothQuantModifier in a recipe is not supported".into(),
                ));
            }
            let names: Vec<String> = ck.tensors().iter().map(|t| t.name.clone()).collect();
            let sq = SmoothQuant::resolve(*strength, mappings, ignore, &names, config.num_layers)?;
            let rewritten = sq.rewritten(|l, p| layout.plans[l][p as usize].is_some());
            check_bf16(ck, &rewritten, "SmoothQuant")?;
            smooth = Some(sq);
        }
    }
    Ok(smooth)
}

/// Tensors a transform rewrites as BF16 must be BF16 in the source.
fn check_bf16(ck: &Checkpoint, names: &[String], transform: &str) -> Result<()> {
    for name in names {
        let t = ck
            .get(name)
            .expect("resolved from the checkpoint's tensors");
        if t.dtype != DType::BF16 {
            return Err(Error::Unsupported(format!(
                "{name} is {}: {transform} rewrites it as BF16 and needs BF16 weights",
                t.dtype.name()
            )));
        }
    }
    Ok(())
}

/// AWQ's plan, resolved on the model's modules; what qforge does not run with AWQ yet is
/// refused here, before any work.
fn awq_plan(
    steps: &[CalibStep],
    ck: &Checkpoint,
    config: &ModelConfig,
    layout: &Layout,
    plan: &QuantPlan,
) -> Result<Option<Awq>> {
    let awqs: Vec<_> = awq_steps(steps).collect();
    let Some(&(mappings, duo, n_grid)) = awqs.first() else {
        return Ok(None);
    };
    let unsupported = |what: &str| {
        Err(Error::Unsupported(format!(
            "AWQModifier {what} is not supported by the calibration pipeline yet"
        )))
    };
    if awqs.len() > 1 {
        return unsupported("more than once in a recipe");
    }
    if plan.kv_cache_scheme.is_some() {
        return unsupported("with a kv_cache_scheme");
    }
    if steps.iter().any(|s| !matches!(s, CalibStep::Awq { .. })) {
        return unsupported("with GPTQ, SmoothQuant or static activation scales");
    }
    for lp in layout.plans.iter().flatten().flatten() {
        if lp.weights.kind != crate::recipe::QuantType::Int {
            return unsupported(&format!(
                "with {} weights (integer weights are)",
                lp.weights.kind.as_str()
            ));
        }
    }
    let names: Vec<String> = ck.tensors().iter().map(|t| t.name.clone()).collect();
    let awq = Awq::resolve(
        duo,
        n_grid,
        mappings,
        &names,
        &Dims::new(config),
        config.num_layers,
        |l, p| layout.plans[l][p as usize].is_some(),
    )?;
    Ok(Some(awq))
}

/// The output tensors and which Linear of which layer is calibrated how.
struct Layout {
    /// Every output tensor, in state-dict order.
    tensors: Vec<OutTensor>,
    /// Input tensors copied as they are.
    copied: Vec<String>,
    plans: Vec<[Option<LinearPlan>; 7]>,
    ignored: Vec<String>,
}

impl Layout {
    fn new(ck: &Checkpoint, config: &ModelConfig, plan: &QuantPlan) -> Result<Layout> {
        quantize::check_source(ck)?;
        let shapes: Vec<(String, Vec<usize>)> = ck
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let (modules, _) = arch::linear_modules(&ck.config, &shapes)?;
        let groups = plan.assign(&modules)?;
        let mut plans: Vec<[Option<LinearPlan>; 7]> = vec![Default::default(); config.num_layers];
        let mut by_weight = HashMap::new();
        let mut ignored = Vec::new();
        for (module, group) in modules.iter().zip(&groups) {
            let Some(g) = group else {
                ignored.push(module.clone());
                continue;
            };
            let (layer, proj) = locate(module)?;
            let lp = LinearPlan::new(proj, &plan.groups[*g], module)?;
            by_weight.insert(format!("{module}.weight"), lp.clone());
            plans[layer][proj as usize] = Some(lp);
        }
        let tied = config.tie_word_embeddings;
        let mut tensors = Vec::new();
        let mut copied = Vec::new();
        for t in ck.tensors() {
            let skip =
                (tied && t.name == "lm_head.weight") || t.name.ends_with("rotary_emb.inv_freq");
            if skip {
                continue;
            }
            match by_weight.get(&t.name) {
                Some(lp) => {
                    if t.dtype != DType::BF16 {
                        return Err(Error::Unsupported(format!(
                            "{} is {}: the calibration pipeline reproduces transformers' BF16 \
                             forward and needs BF16 weights",
                            t.name,
                            t.dtype.name()
                        )));
                    }
                    let module = t.name.strip_suffix(".weight").unwrap_or(&t.name);
                    tensors.extend(lp.outputs(module, t.shape[0], t.shape[1]));
                }
                None => {
                    tensors.push(OutTensor::new(t.name.clone(), t.dtype, t.shape.clone()));
                    copied.push(t.name.clone());
                }
            }
        }
        if plan.kv_cache_scheme.is_some() {
            for layer in 0..config.num_layers {
                for s in ["k_scale", "v_scale"] {
                    let name = format!("model.layers.{layer}.self_attn.{s}");
                    tensors.push(OutTensor::new(name, DType::BF16, vec![1]));
                }
            }
        }
        tensors.sort_by(|a, b| state_dict_cmp(&a.name, &b.name));
        Ok(Layout {
            tensors,
            copied,
            plans,
            ignored,
        })
    }
}

/// `(layer, proj)` of a decoder-layer Linear (`model.layers.3.mlp.up_proj`).
fn locate(module: &str) -> Result<(usize, Proj)> {
    let rest = module.strip_prefix("model.layers.");
    let parsed = rest.and_then(|r| {
        let (n, path) = r.split_once('.')?;
        let proj = Proj::ALL.into_iter().find(|p| p.path() == path)?;
        Some((n.parse().ok()?, proj))
    });
    parsed.ok_or_else(|| {
        Error::Unsupported(format!(
            "{module}: only the Linears of the decoder layers can be calibrated (add it to ignore)"
        ))
    })
}
