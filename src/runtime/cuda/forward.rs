//! [`CudaModel`]: loading (checkpoint, host weights, random) and the forward pass, top to
//! bottom like the model definition; see [`super::model`] for the numerics.

use super::dweights::DWeights;
use super::gpu::{DBuf, Gpu};
use super::model::{attn_dims, Gemm, GemmMode, Scratch};
use super::ops::{self, ActOut, AttnDims};
use crate::checkpoint::Checkpoint;
use crate::runtime::config::ModelConfig;
use crate::runtime::cpu::ops::inv_freq;
use crate::runtime::weights::Weights;
use crate::runtime::Backend;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Load options.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// KV-cache length (default 4096, capped by the model's `max_position_embeddings`).
    pub max_seq: Option<usize>,
    /// Rows per prefill step; longer prompts run in chunks (default 2048).
    pub max_rows: Option<usize>,
    pub gemm: GemmMode,
    /// Fewest keys per split of a split (flash-decoding) attention (default 256; tests
    /// force small splits).
    pub split_keys: Option<usize>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            max_seq: None,
            max_rows: None,
            gemm: GemmMode::Auto,
            split_keys: None,
        }
    }
}

/// Residual streams keyed like the CPU backend's trace (`residual_after_attn.{l}`,
/// `residual_after_mlp.{l}`), each `[t, hidden]`.
pub type Trace = BTreeMap<String, Vec<f32>>;

/// A model loaded on the GPU.
pub struct CudaModel {
    pub config: ModelConfig,
    pub weights: DWeights,
    pub gemm: Gemm,
    pub scratch: Scratch,
    dims: AttnDims,
    max_seq: usize,
    cached: usize,
    k_cache: Vec<DBuf>,
    v_cache: Vec<DBuf>,
    cos: DBuf,
    sin: DBuf,
    /// Partial states of split attentions, and the fewest keys per split.
    part: DBuf,
    split_keys: usize,
    // Last: every buffer above is freed while the context is alive.
    pub gpu: Gpu,
}

/// Loads a checkpoint directory onto the GPU, streaming the weights.
pub fn load_cuda(dir: &Path, opts: &CudaOptions) -> Result<CudaModel> {
    load_cuda_on(Gpu::new(opts.device)?, dir, opts)
}

/// [`load_cuda`] onto a given GPU (or the emulator).
pub fn load_cuda_on(gpu: Gpu, dir: &Path, opts: &CudaOptions) -> Result<CudaModel> {
    let ck = Checkpoint::open(dir)?;
    let config = ModelConfig::from_json(&ck.config)?;
    attn_dims(&config)?;
    let weights = DWeights::from_checkpoint(&gpu, &ck, &config, &mut |_, _| {})?;
    drop(ck);
    CudaModel::new(gpu, config, weights, opts)
}

impl CudaModel {
    /// Builds the runtime state (KV cache, rope tables, scratch, GEMM engine) around weights.
    pub fn new(
        gpu: Gpu,
        config: ModelConfig,
        weights: DWeights,
        opts: &CudaOptions,
    ) -> Result<CudaModel> {
        let dims = attn_dims(&config)?;
        let mut max_seq = opts
            .max_seq
            .unwrap_or(4096)
            .min(config.max_position_embeddings);
        if let Some(w) = config.sliding_window {
            max_seq = max_seq.min(w);
        }
        if max_seq == 0 {
            return Err(Error::Runtime("max_seq must be at least 1".into()));
        }
        let rows = opts.max_rows.unwrap_or(2048).clamp(1, max_seq);
        let kv_bytes = max_seq * config.kv_dim() * 2;
        let mut k_cache = Vec::with_capacity(config.num_layers);
        let mut v_cache = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            k_cache.push(gpu.alloc(kv_bytes)?);
            v_cache.push(gpu.alloc(kv_bytes)?);
        }
        let (cos, sin) = rope_tables(&gpu, &config, max_seq)?;
        let smem = ops::attention_smem(dims, ops::attention_rows_per_block(dims, rows));
        if smem > 48 << 10 {
            gpu.set_max_smem("attention", smem)?;
        }
        Ok(CudaModel {
            part: gpu.alloc(ops::attention_part_len(dims) * 4)?,
            split_keys: opts.split_keys.unwrap_or(256),
            gemm: Gemm::new(&gpu, opts.gemm)?,
            scratch: Scratch::new(&gpu, &config, rows)?,
            dims,
            max_seq,
            cached: 0,
            k_cache,
            v_cache,
            cos,
            sin,
            config,
            weights,
            gpu,
        })
    }

    /// Uploads host weights (small models and tests).
    pub fn from_host(
        config: ModelConfig,
        weights: &Weights,
        opts: &CudaOptions,
    ) -> Result<CudaModel> {
        CudaModel::from_host_on(Gpu::new(opts.device)?, config, weights, opts)
    }

    /// [`CudaModel::from_host`] onto a given GPU (or the emulator).
    pub fn from_host_on(
        gpu: Gpu,
        config: ModelConfig,
        weights: &Weights,
        opts: &CudaOptions,
    ) -> Result<CudaModel> {
        attn_dims(&config)?;
        let w = DWeights::from_host(&gpu, weights)?;
        CudaModel::new(gpu, config, w, opts)
    }

    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    pub fn cached_len(&self) -> usize {
        self.cached
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

    /// Runs `tokens` at `pos..` in chunks of the scratch size; the logits of the last
    /// `logit_rows` rows of the last chunk (or of every row when `all`) are left on the GPU
    /// and, when `out` is given, appended to it.
    fn run(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all: bool,
        mut out: Option<&mut Vec<f32>>,
        mut trace: Option<&mut Trace>,
    ) -> Result<usize> {
        self.check_inputs(tokens, pos)?;
        let chunk = self.scratch.rows;
        let mut rows_out = 0;
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let last = (i + 1) * chunk >= tokens.len();
            let want = if all {
                part.len()
            } else if last {
                1
            } else {
                0
            };
            self.step(part, pos + i * chunk, want, trace.as_deref_mut())?;
            if let (Some(o), true) = (out.as_deref_mut(), want > 0) {
                let v = self.config.vocab_size;
                let ptr = self.scratch.logits.as_ref().expect("logits computed").ptr;
                o.extend(self.gpu.download_f32(ptr, want * v)?);
            }
            rows_out = want;
        }
        Ok(rows_out)
    }

    /// One chunk: embedding, layers, and logits for its last `logit_rows` rows.
    fn step(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logit_rows: usize,
        mut trace: Option<&mut Trace>,
    ) -> Result<()> {
        let t = tokens.len();
        let c = &self.config;
        let (g, w, s, dims) = (&self.gpu, &self.weights, &mut self.scratch, self.dims);
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let eps = c.rms_norm_eps as f32;
        let scale = (c.head_dim as f64).powf(-0.5) as f32;
        let ids: Vec<u8> = tokens.iter().flat_map(|i| i.to_le_bytes()).collect();
        g.upload(s.ids.ptr, &ids)?;
        ops::embed_gather(g, w.embed.w_ptr(), s.ids.ptr, t, h, s.x.ptr)?;
        // The same attention split for every layer of this chunk.
        let sms = g.info.sm_count.max(1) as usize;
        let split = ops::attention_split(dims, t, pos, sms, self.split_keys)
            .map(|chunk| (chunk, self.part.ptr));
        let mut pending = 0u64; // the previous block's output, added by the next norm
        for (l, layer) in w.layers.iter().enumerate() {
            let act = Gemm::wants(&layer.qkv, &s.act);
            ops::add_rmsnorm(g, s.x.ptr, pending, layer.input_norm.ptr, eps, t, h, act)?;
            if l > 0 {
                record(g, &mut trace, "residual_after_mlp", l - 1, s.x.ptr, t * h)?;
            }
            self.gemm
                .linear(g, &layer.qkv, &s.act, (t, 0), s.qkv.ptr, false)?;
            let norms = (opt_ptr(&layer.q_norm), opt_ptr(&layer.k_norm), eps);
            let cache = (self.k_cache[l].ptr, self.v_cache[l].ptr);
            let tables = (self.cos.ptr, self.sin.ptr);
            ops::rope_qkv(
                g,
                dims,
                s.qkv.ptr,
                t,
                pos,
                tables,
                norms,
                (s.q.ptr, cache.0, cache.1),
            )?;
            ops::attention(g, dims, s.q.ptr, cache, s.att.ptr, t, pos, scale, split)?;
            let o_in = if layer.o.is_fp8() {
                ops::quant_rows(g, s.att.ptr, t, c.q_dim(), s.act.q.ptr, s.act.s.ptr)?;
                &s.act
            } else {
                g.copy(s.act.b.ptr, s.att.ptr, t * c.q_dim() * 2)?;
                &s.act
            };
            self.gemm
                .linear(g, &layer.o, o_in, (t, 0), s.proj.ptr, false)?;
            let act = Gemm::wants(&layer.gate_up, &s.act);
            ops::add_rmsnorm(g, s.x.ptr, s.proj.ptr, layer.post_norm.ptr, eps, t, h, act)?;
            record(g, &mut trace, "residual_after_attn", l, s.x.ptr, t * h)?;
            self.gemm
                .linear(g, &layer.gate_up, &s.act, (t, 0), s.gu.ptr, false)?;
            ops::silu_mul(g, s.gu.ptr, t, inter, Gemm::wants(&layer.down, &s.act))?;
            self.gemm
                .linear(g, &layer.down, &s.act, (t, 0), s.proj.ptr, false)?;
            pending = s.proj.ptr;
        }
        self.cached = pos + t;
        let lm = w.lm_head();
        if lm.is_fp8() {
            return Err(Error::Unsupported(format!(
                "{}: an FP8 lm_head is not supported by the CUDA backend",
                lm.name
            )));
        }
        // Final norm: on every row when tracing (the last residual is recorded), else only
        // on the rows whose logits are wanted.
        let first = if trace.is_some() { 0 } else { t - logit_rows };
        if first == t {
            return Ok(());
        }
        let xr = s.x.at(first * h * 4);
        let pr = if pending == 0 {
            0
        } else {
            pending + (first * h * 2) as u64
        };
        ops::add_rmsnorm(
            g,
            xr,
            pr,
            w.norm.ptr,
            eps,
            t - first,
            h,
            ActOut::Bf16(s.act.b.ptr),
        )?;
        if let Some(l) = c.num_layers.checked_sub(1) {
            record(g, &mut trace, "residual_after_mlp", l, s.x.ptr, t * h)?;
        }
        if logit_rows > 0 {
            let logits = s.logits(g, logit_rows, c.vocab_size)?;
            let in_row = t - logit_rows - first;
            self.gemm
                .linear(g, lm, &s.act, (logit_rows, in_row), logits, true)?;
        }
        Ok(())
    }

    /// Like [`Backend::forward`] but also records the residual stream after every block.
    pub fn forward_trace(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all_logits: bool,
    ) -> Result<(Vec<f32>, Trace)> {
        let mut trace = Trace::new();
        let mut out = Vec::new();
        self.run(tokens, pos, all_logits, Some(&mut out), Some(&mut trace))?;
        Ok((out, trace))
    }

    /// Runs `tokens` and returns the greedy next token (argmax on the GPU; only 4 bytes come
    /// back): the decode loop of benchmarks and `generate`.
    pub fn forward_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        self.run(tokens, pos, false, None, None)?;
        let s = &self.scratch;
        let logits = s.logits.as_ref().expect("logits computed").ptr;
        ops::argmax_rows(&self.gpu, logits, 1, self.config.vocab_size, s.argmax.ptr)?;
        let mut b = [0u8; 4];
        self.gpu.download(s.argmax.ptr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Runs `tokens` without reading anything back, then waits for the GPU (timing).
    pub fn forward_sync(&mut self, tokens: &[u32], pos: usize) -> Result<()> {
        self.run(tokens, pos, false, None, None)?;
        self.gpu.sync()
    }
}

fn opt_ptr(b: &Option<DBuf>) -> u64 {
    b.as_ref().map_or(0, |b| b.ptr)
}

/// Downloads `n` f32 of the residual stream into the trace, when tracing.
fn record(
    g: &Gpu,
    trace: &mut Option<&mut Trace>,
    what: &str,
    layer: usize,
    x: u64,
    n: usize,
) -> Result<()> {
    if let Some(t) = trace.as_deref_mut() {
        t.insert(format!("{what}.{layer}"), g.download_f32(x, n)?);
    }
    Ok(())
}

/// cos/sin of `p · inv_freq[i]` for every position, computed exactly as the CPU backend's
/// tables (f32 angle, f64 cos/sin rounded to f32).
fn rope_tables(g: &Gpu, c: &ModelConfig, max_seq: usize) -> Result<(DBuf, DBuf)> {
    let inv = inv_freq(&c.rope, c.head_dim);
    let mut cos = Vec::with_capacity(max_seq * inv.len() * 4);
    let mut sin = Vec::with_capacity(max_seq * inv.len() * 4);
    for p in 0..max_seq {
        for &f in &inv {
            let a = (p as f32 * f) as f64;
            cos.extend_from_slice(&(a.cos() as f32).to_le_bytes());
            sin.extend_from_slice(&(a.sin() as f32).to_le_bytes());
        }
    }
    Ok((g.upload_new(&cos)?, g.upload_new(&sin)?))
}

impl Backend for CudaModel {
    fn forward(&mut self, tokens: &[u32], pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.run(tokens, pos, all_logits, Some(&mut out), None)?;
        Ok(out)
    }

    fn reset(&mut self) {
        self.cached = 0;
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn describe(&self) -> String {
        let i = &self.gpu.info;
        format!("cuda ({}, {}, {})", i.name, i.arch, self.gemm.note)
    }
}
