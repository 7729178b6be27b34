//! The CPU backend: one readable forward pass over [`Weights`], with a preallocated KV cache
//! and scratch buffers (a decode step through [`CpuModel::forward_logits`] makes no
//! allocation of its own), rayon-parallel matmuls, and FP8 weights kept as 1 byte each
//! (W8A8 with exact accumulation, see [`linear`] and [`dot`]).

pub mod attention;
pub mod dot;
pub mod linear;
pub mod ops;
pub mod prefill;
pub mod softmax;

use crate::checkpoint::Checkpoint;
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::{fp8_kv_round_trip, Linear, Weights};
use crate::runtime::Backend;
use crate::{Error, Result};
use attention::{AttnShape, KvView};
use linear::LinearScratch;
use ops::RopeTables;
use std::collections::BTreeMap;
use std::path::Path;

/// Default KV-cache length when [`CpuOptions::max_seq`] is not given (capped by the model's
/// `max_position_embeddings`). Untouched cache pages cost no memory.
pub const DEFAULT_MAX_SEQ: usize = 4096;

/// Load options.
#[derive(Debug, Clone, Default)]
pub struct CpuOptions {
    /// Longest sequence (prompt + generated) the KV cache holds.
    pub max_seq: Option<usize>,
}

/// Residual streams recorded by [`CpuModel::forward_trace`], keyed
/// `residual_after_attn.{layer}` / `residual_after_mlp.{layer}`, each `[t, hidden]`.
pub type Trace = BTreeMap<String, Vec<f32>>;

/// A model loaded for the CPU.
#[derive(Debug)]
pub struct CpuModel {
    pub config: ModelConfig,
    pub weights: Weights,
    rope: RopeTables,
    max_seq: usize,
    /// Positions `0..cached` of the KV cache are filled.
    cached: usize,
    /// Per layer `[max_seq, kv_dim]`.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    s: Scratch,
}

/// Activation buffers, sized for `t` rows by [`Scratch::ensure`]; they only grow.
#[derive(Debug, Default)]
struct Scratch {
    rows: usize,
    x: Vec<f32>,      // residual stream [t, hidden]
    xn: Vec<f32>,     // normed input [t, hidden]
    q: Vec<f32>,      // [t, q_dim]
    k: Vec<f32>,      // [t, kv_dim]
    v: Vec<f32>,      // [t, kv_dim]
    att: Vec<f32>,    // attention output [t, q_dim]
    att_h: Vec<f32>,  // attention output per head [heads, t, head_dim]
    scores: Vec<f32>, // [heads, max_seq]
    proj: Vec<f32>,   // o_proj / down_proj output [t, hidden]
    gate: Vec<f32>,   // [t, intermediate]
    up: Vec<f32>,     // [t, intermediate]
    logits: Vec<f32>, // [rows asked for, vocab]
    lin: LinearScratch,
}

impl Scratch {
    fn ensure(&mut self, c: &ModelConfig, t: usize) {
        if t <= self.rows {
            return;
        }
        let size = |v: &mut Vec<f32>, n: usize| v.resize(n, 0.0);
        size(&mut self.x, t * c.hidden_size);
        size(&mut self.xn, t * c.hidden_size);
        size(&mut self.q, t * c.q_dim());
        size(&mut self.k, t * c.kv_dim());
        size(&mut self.v, t * c.kv_dim());
        size(&mut self.att, t * c.q_dim());
        size(&mut self.att_h, t * c.q_dim());
        size(&mut self.proj, t * c.hidden_size);
        size(&mut self.gate, t * c.intermediate_size);
        size(&mut self.up, t * c.intermediate_size);
        self.rows = t;
    }

    /// Logits for `rows` rows: only the rows asked for, so that a long prompt run for its
    /// last row alone does not take a row of `vocab` floats per token.
    fn ensure_logits(&mut self, c: &ModelConfig, rows: usize) {
        if self.logits.len() < rows * c.vocab_size {
            self.logits.resize(rows * c.vocab_size, 0.0);
        }
    }
}

/// Loads a checkpoint directory for the CPU with default options.
pub fn load_cpu(dir: &Path) -> Result<CpuModel> {
    load_cpu_with(dir, &CpuOptions::default())
}

/// Loads a checkpoint directory: config, integrity check, weights, cache.
pub fn load_cpu_with(dir: &Path, opts: &CpuOptions) -> Result<CpuModel> {
    let ck = Checkpoint::open(dir)?;
    let config = ModelConfig::from_json(&ck.config)?;
    let weights = Weights::load(&ck, &config)?;
    drop(ck);
    CpuModel::new(config, weights, opts)
}

impl CpuModel {
    /// Builds the runtime state (rope tables, KV cache, scratch) around loaded weights.
    pub fn new(config: ModelConfig, weights: Weights, opts: &CpuOptions) -> Result<CpuModel> {
        let mut max_seq = opts
            .max_seq
            .unwrap_or(DEFAULT_MAX_SEQ)
            .min(config.max_position_embeddings);
        if let Some(w) = config.sliding_window {
            max_seq = max_seq.min(w);
        }
        if max_seq == 0 {
            return Err(Error::Runtime("max_seq must be at least 1".into()));
        }
        let cache = || vec![vec![0.0f32; max_seq * config.kv_dim()]; config.num_layers];
        let mut s = Scratch {
            scores: vec![0.0; config.num_heads * max_seq],
            ..Scratch::default()
        };
        s.ensure(&config, 1);
        s.ensure_logits(&config, 1);
        Ok(CpuModel {
            rope: RopeTables::new(&config.rope, config.head_dim, max_seq),
            k_cache: cache(),
            v_cache: cache(),
            max_seq,
            cached: 0,
            s,
            config,
            weights,
        })
    }

    /// Longest sequence the KV cache holds.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    /// Number of positions currently in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.cached
    }

    /// A Linear module by name (e.g. `model.layers.0.mlp.up_proj`), for tests and debugging
    /// with [`linear::run_linear`].
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        self.weights.linear(name)
    }

    /// Like [`Backend::forward`], but returns a view of the internal logits buffer instead of
    /// a new vector: the allocation-free form for decode loops.
    pub fn forward_logits(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all_logits: bool,
    ) -> Result<&[f32]> {
        self.run(tokens, pos, all_logits, None)
    }

    /// [`Backend::forward`] that also records the residual stream after every attention and
    /// MLP block (see [`Trace`]).
    pub fn forward_trace(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all_logits: bool,
    ) -> Result<(Vec<f32>, Trace)> {
        let mut trace = Trace::new();
        let logits = self
            .run(tokens, pos, all_logits, Some(&mut trace))?
            .to_vec();
        Ok((logits, trace))
    }

    fn check_inputs(&self, tokens: &[u32], pos: usize) -> Result<()> {
        crate::runtime::check_forward_inputs(
            tokens,
            pos,
            self.cached,
            self.max_seq,
            self.config.vocab_size,
        )
    }

    /// Runs [`Self::forward_pass`] on a rayon worker thread, so that the many parallel
    /// matmuls inside it are spawned locally instead of each being injected into the pool
    /// from outside (which costs a wake-up and, every 63 injections, an allocation).
    fn run(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all_logits: bool,
        trace: Option<&mut Trace>,
    ) -> Result<&[f32]> {
        rayon::scope(|_| self.forward_pass(tokens, pos, all_logits, trace))
    }

    /// The forward pass: `tokens` at positions `pos..`, returning logits for every row or the
    /// last one. Reads top to bottom like the model definition.
    fn forward_pass(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all_logits: bool,
        mut trace: Option<&mut Trace>,
    ) -> Result<&[f32]> {
        self.check_inputs(tokens, pos)?;
        let t = tokens.len();
        let c = &self.config;
        let w = &self.weights;
        let s = &mut self.s;
        s.ensure(c, t);
        let (hd, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let eps = c.rms_norm_eps as f32;
        let shape = AttnShape {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };

        // Embedding gather.
        for (row, &id) in s.x.chunks_exact_mut(hd).zip(tokens) {
            embed_row(&w.embed, id as usize, row);
        }

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention block.
            ops::rmsnorm(&s.x[..t * hd], &layer.input_norm, eps, &mut s.xn);
            linear::forward(&layer.q_proj, &s.xn, t, &mut s.q, &mut s.lin);
            linear::forward(&layer.k_proj, &s.xn, t, &mut s.k, &mut s.lin);
            linear::forward(&layer.v_proj, &s.xn, t, &mut s.v, &mut s.lin);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                ops::rmsnorm_in_place(&mut s.q[..t * qd], qn, eps);
                ops::rmsnorm_in_place(&mut s.k[..t * kvd], kn, eps);
            }
            self.rope.apply(&mut s.q[..t * qd], qd, pos);
            self.rope.apply(&mut s.k[..t * kvd], kvd, pos);
            let (kc, vc) = (&mut self.k_cache[l], &mut self.v_cache[l]);
            kc[pos * kvd..(pos + t) * kvd].copy_from_slice(&s.k[..t * kvd]);
            vc[pos * kvd..(pos + t) * kvd].copy_from_slice(&s.v[..t * kvd]);
            if let Some([k_scale, v_scale]) = layer.kv_scales {
                // An FP8 KV cache (kv_cache_scheme): what vLLM stores and reads back.
                fp8_kv_round_trip(&mut kc[pos * kvd..(pos + t) * kvd], k_scale);
                fp8_kv_round_trip(&mut vc[pos * kvd..(pos + t) * kvd], v_scale);
            }
            let kv = KvView { k: kc, v: vc };
            if s.lin.gemm {
                prefill::attention_gemm(shape, &s.q, kv, pos, t, &mut s.att);
            } else {
                let (sc, ah) = (&mut s.scores, &mut s.att_h);
                attention::attention(shape, &s.q, kv, pos, t, sc, ah, &mut s.att);
            }
            linear::forward(&layer.o_proj, &s.att, t, &mut s.proj, &mut s.lin);
            add(&mut s.x[..t * hd], &s.proj);
            record(&mut trace, "residual_after_attn", l, &s.x[..t * hd]);

            // MLP block.
            ops::rmsnorm(&s.x[..t * hd], &layer.post_attention_norm, eps, &mut s.xn);
            linear::forward(&layer.gate_proj, &s.xn, t, &mut s.gate, &mut s.lin);
            linear::forward(&layer.up_proj, &s.xn, t, &mut s.up, &mut s.lin);
            let it = t * c.intermediate_size;
            ops::silu_mul(&mut s.gate[..it], &s.up[..it]);
            linear::forward(&layer.down_proj, &s.gate, t, &mut s.proj, &mut s.lin);
            add(&mut s.x[..t * hd], &s.proj);
            record(&mut trace, "residual_after_mlp", l, &s.x[..t * hd]);
        }
        self.cached = pos + t;

        // Final norm and lm_head on the rows asked for.
        let first = if all_logits { 0 } else { t - 1 };
        let rows = t - first;
        s.ensure_logits(c, rows);
        ops::rmsnorm(&s.x[first * hd..t * hd], &w.norm, eps, &mut s.xn);
        linear::forward(w.lm_head(), &s.xn, rows, &mut s.logits, &mut s.lin);
        Ok(&s.logits[..rows * c.vocab_size])
    }
}

/// `row = f32(embedding[id])`.
fn embed_row(embed: &Linear, id: usize, row: &mut [f32]) {
    use crate::runtime::weights::{Dense, LinearWeight};
    let d = row.len();
    let range = id * d..(id + 1) * d;
    match &embed.weight {
        LinearWeight::Dense(Dense::Bf16(v)) => {
            for (o, &b) in row.iter_mut().zip(&v[range]) {
                *o = dot::bf16_to_f32(b);
            }
        }
        LinearWeight::Dense(Dense::F16(v)) => {
            for (o, &b) in row.iter_mut().zip(&v[range]) {
                *o = dot::f16_to_f32(b);
            }
        }
        LinearWeight::Dense(Dense::F32(v)) => row.copy_from_slice(&v[range]),
        // Not produced by the loader (embeddings are never quantized); dequantize if given.
        w => {
            for (c, o) in row.iter_mut().enumerate() {
                *o = w.value(id, c, d);
            }
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Stores `x` as `{what}.{layer}` when tracing (nothing is formatted otherwise).
fn record(trace: &mut Option<&mut Trace>, what: &str, layer: usize, x: &[f32]) {
    if let Some(t) = trace.as_deref_mut() {
        t.insert(format!("{what}.{layer}"), x.to_vec());
    }
}

impl Backend for CpuModel {
    fn forward_view(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<&[f32]> {
        self.forward_logits(tokens, pos, all_logits)
    }

    fn weight_bytes_per_token(&self) -> u64 {
        self.weights.bytes_per_token()
    }

    fn reset(&mut self) {
        self.cached = 0;
    }

    fn set_fast_prefill(&mut self, on: bool) {
        self.s.lin.gemm = on;
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
}
