//! [`CudaModel`]: loading (checkpoint, host weights, random) and the forward pass, top to
//! bottom like the model definition; see [`super::gemm`] for GEMM dispatch, scratch buffers and RoPE tables.

use super::device_weights::DWeights;
use super::gemm::{attn_dims, rope_tables, Gemm, GemmMode, Scratch};
use super::gpu::{DBuf, Gpu};
use super::graph::Graph;
use super::kernels::GemvVariant;
use super::ops::{self, ActOut, AttnDims, Split};
use super::tune::{GemvPick, Tuning};
use crate::checkpoint::Checkpoint;
use crate::runtime::config::ModelConfig;
use crate::runtime::weights::Weights;
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
    /// Replay decode steps as one captured CUDA graph (default on; `QFORGE_CUDA_GRAPHS=0`
    /// turns it off everywhere).
    pub graphs: bool,
    /// Which build of `kernels/gemv.cu` decode runs (None: `QFORGE_GEMV`, by default timed
    /// at load on a GPU; see [`super::tune`]).
    pub gemv: Option<GemvPick>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            max_seq: None,
            max_rows: None,
            gemm: GemmMode::Auto,
            split_keys: None,
            graphs: true,
            gemv: None,
        }
    }
}

/// False when `QFORGE_CUDA_GRAPHS` is `0`.
fn graphs_allowed() -> bool {
    std::env::var_os("QFORGE_CUDA_GRAPHS").is_none_or(|v| v != "0")
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
    pub(super) cached: usize,
    k_cache: Vec<DBuf>,
    v_cache: Vec<DBuf>,
    cos: DBuf,
    sin: DBuf,
    /// Partial states of split attentions, the fewest keys per split, and the split of every
    /// decode step (that of the whole cache, so that one graph serves every position).
    part: DBuf,
    split_keys: usize,
    decode_split: Option<Split>,
    /// The captured decode step, whether to use one, and why graphs were turned off.
    /// The graph writes the logits buffer it was captured with and runs the GEMV build it
    /// was captured under (both held here): a longer prefill that reallocates the buffer,
    /// or another build (whose module replaced the old one's), invalidates it.
    graph: Option<(Graph, u64, GemvVariant)>,
    /// A step's position and ids as bytes, before their upload.
    input: Vec<u8>,
    pub(super) graphs: bool,
    pub(super) graph_note: Option<String>,
    /// The GEMV build in use and how it was picked (None: the default build, not tuned).
    pub tuning: Option<Tuning>,
    /// What [`Backend::forward_view`] and [`Backend::forward_top`] lend out.
    pub(super) logits: Vec<f32>,
    pub(super) top: Vec<(f32, u32)>,
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
        if ops::mma_head_dim(dims.head_dim) {
            let (name, smem) = ops::attention_mma_kernel(dims.head_dim);
            if smem > 48 << 10 {
                gpu.set_max_smem(name, smem)?;
            }
        }
        let split_keys = opts.split_keys.unwrap_or(256);
        let sms = gpu.info.sm_count.max(1) as usize;
        let pick = opts.gemv.map_or_else(GemvPick::from_env, Ok)?;
        let mut m = CudaModel {
            part: gpu.alloc(ops::attention_part_len(dims) * 4)?,
            split_keys,
            decode_split: ops::attention_split(dims, 1, max_seq, sms, split_keys),
            graph: None,
            input: Vec::with_capacity((rows + 1) * 4),
            graphs: opts.graphs && graphs_allowed(),
            graph_note: None,
            tuning: None,
            logits: Vec::new(),
            top: Vec::with_capacity(ops::TOP_K_MAX),
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
        };
        m.pick_gemv(pick)?;
        Ok(m)
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
    pub(super) fn run(
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

    /// One chunk: its position and ids to the GPU, then its launches ([`Self::launches`]);
    /// a decode step without tracing replays the captured graph of them instead.
    fn step(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logit_rows: usize,
        trace: Option<&mut Trace>,
    ) -> Result<()> {
        let t = tokens.len();
        // The scratch `ids` buffer holds [pos, ids…] (i32/u32), staged in a reused buffer.
        self.input.clear();
        let words = std::iter::once(pos as u32).chain(tokens.iter().copied());
        self.input.extend(words.flat_map(u32::to_le_bytes));
        self.gpu.upload(self.scratch.ids.ptr, &self.input)?;
        if t == 1 && logit_rows == 1 && trace.is_none() && self.graphs {
            let logits = self.scratch.logits.as_ref().map(|b| b.ptr);
            let gemv = self.gpu.gemv();
            if (self.graph.as_ref()).is_some_and(|g| Some(g.1) != logits || g.2 != gemv) {
                self.graph = None;
            }
            if self.graph.is_none() {
                self.capture_decode();
            }
            if let Some((graph, _, _)) = &self.graph {
                self.gpu.replay(graph)?;
                self.cached = pos + t;
                return Ok(());
            }
        }
        let split = match t {
            1 => self.decode_split,
            _ => {
                let sms = self.gpu.info.sm_count.max(1) as usize;
                ops::attention_split(self.dims, t, pos + t, sms, self.split_keys)
            }
        };
        self.launches(t, split, logit_rows, trace)?;
        self.cached = pos + t;
        Ok(())
    }

    /// Captures the decode step's launches as a graph; on failure turns graphs off (saying
    /// why in [`Backend::describe`]) and the step runs launch by launch.
    fn capture_decode(&mut self) {
        let v = self.config.vocab_size;
        let res = self.scratch.logits(&self.gpu, 1, v).and_then(|logits| {
            self.gpu.begin_capture()?;
            let launched = self.launches(1, self.decode_split, 1, None);
            let graph = self.gpu.end_capture();
            Ok((launched.and(graph)?, logits, self.gpu.gemv()))
        });
        match res {
            Ok(g) => self.graph = Some(g),
            Err(e) if self.gpu.pdl() => {
                // Programmatic launches are the newer feature: try the graph without them.
                self.gpu.set_pdl(false);
                self.graph_note = Some(format!("programmatic launches off: {e}"));
                self.capture_decode();
            }
            Err(e) => {
                self.graphs = false;
                self.graph_note = Some(format!("CUDA graphs off: {e}"));
            }
        }
    }

    /// Turns decode graphs on or off (benchmarks time both).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
        self.recapture();
    }

    /// Turns programmatic launches in the decode graph on or off (benchmarks time both);
    /// the next decode step captures the graph again.
    pub fn set_pdl(&mut self, on: bool) {
        self.gpu.set_pdl(on);
        self.recapture();
    }

    /// Drops the captured decode step: the next one is captured anew (after a change to
    /// what its launches are, such as [`Gpu::only`](super::gpu::Gpu::only)).
    pub fn recapture(&mut self) {
        self.graph = None;
    }

    /// Graphs on, why they or PDL were turned off, and PDL on: what a failed capture
    /// changes, kept across a GEMV tuning so that one build's failure is not the model's.
    pub(super) fn graph_state(&self) -> (bool, Option<String>, bool) {
        (self.graphs, self.graph_note.clone(), self.gpu.pdl())
    }

    pub(super) fn restore_graph_state(
        &mut self,
        (graphs, note, pdl): (bool, Option<String>, bool),
    ) {
        (self.graphs, self.graph_note) = (graphs, note);
        self.gpu.set_pdl(pdl);
        self.recapture();
    }

    /// Whether decode steps replay a captured graph.
    pub fn graphs(&self) -> bool {
        self.graphs
    }

    /// The GEMV build the captured decode step runs, if one is captured.
    pub fn graph_gemv(&self) -> Option<GemvVariant> {
        self.graph.as_ref().map(|g| g.2)
    }

    /// Whether a decode step has been captured (and is replayed from now on).
    pub fn graph_captured(&self) -> bool {
        self.graph.is_some()
    }

    /// The launches of one chunk of `t` rows at the position in the scratch input: embedding,
    /// layers, and the logits of its last `logit_rows` rows. Nothing here depends on the
    /// position on the host, so a decode step can be captured once.
    fn launches(
        &mut self,
        t: usize,
        split: Option<Split>,
        logit_rows: usize,
        mut trace: Option<&mut Trace>,
    ) -> Result<()> {
        let c = &self.config;
        let (g, w, s, dims) = (&self.gpu, &self.weights, &mut self.scratch, self.dims);
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let eps = c.rms_norm_eps as f32;
        let scale = (c.head_dim as f64).powf(-0.5) as f32;
        let (pos, ids) = (s.ids.ptr, s.ids.at(4));
        ops::embed_gather(g, w.embed.w_ptr(), ids, t, h, s.x.ptr)?;
        let split = split.map(|sp| (sp, self.part.ptr));
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
            // An o_proj with BF16 input reads the attention's output where it lands: no
            // copy, which in the decode graph would also be a memcpy node between two
            // programmatic launches.
            let o_in = Gemm::wants(&layer.o, &s.act);
            let io = ops::AttnIo {
                q: s.q.ptr,
                cache,
                out: if let ActOut::Bf16(b) = o_in {
                    b
                } else {
                    s.att.ptr
                },
                rows: t,
                pos,
                scale,
            };
            ops::attention(g, dims, io, split)?;
            if !matches!(o_in, ActOut::Bf16(_)) {
                ops::quant_rows(g, s.att.ptr, t, c.q_dim(), o_in)?;
            }
            self.gemm
                .linear(g, &layer.o, &s.act, (t, 0), s.proj.ptr, false)?;
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
        let lm = w.lm_head();
        if lm.is_codes() {
            return Err(Error::Unsupported(format!(
                "{}: a quantized lm_head is not supported by the CUDA backend",
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

    /// Runs `tokens` and returns the greedy next token (argmax on the GPU; only 8 bytes come
    /// back): the decode loop of benchmarks.
    pub fn forward_argmax(&mut self, tokens: &[u32], pos: usize) -> Result<u32> {
        let mut top = Vec::with_capacity(1);
        self.top_into(tokens, pos, 1, &mut top)?;
        Ok(top[0].1)
    }

    /// Runs `tokens` and sets `out` to the `k` (1 ≤ k ≤ min(vocab, 1024)) largest logits
    /// of the last row with their ids, best first, in the order of
    /// [`crate::runtime::sampler::top_candidates`]: all that greedy decoding and top-k
    /// sampling need, selected on the GPU, so only `8·k` bytes come back instead of the
    /// whole vocabulary.
    pub fn top_into(
        &mut self,
        tokens: &[u32],
        pos: usize,
        k: usize,
        out: &mut Vec<(f32, u32)>,
    ) -> Result<()> {
        let v = self.config.vocab_size;
        if k == 0 || k > v.min(ops::TOP_K_MAX) {
            return Err(Error::Runtime(format!(
                "top-k on the GPU needs 1 <= k <= {}, got {k}",
                v.min(ops::TOP_K_MAX)
            )));
        }
        self.run(tokens, pos, false, None, None)?;
        let s = &self.scratch;
        let logits = s.logits.as_ref().expect("logits computed").ptr;
        if k == 1 {
            ops::argmax_rows(&self.gpu, logits, 1, v, s.top.ptr)?;
        } else {
            ops::top_k_rows(&self.gpu, logits, 1, v, k, s.top.ptr)?;
        }
        let mut b = [0u8; ops::TOP_K_MAX * 8];
        self.gpu.download(s.top.ptr, &mut b[..8 * k])?;
        out.clear();
        out.extend(b[..8 * k].chunks_exact(8).map(|p| {
            let word = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            (f32::from_bits(word(0)), word(4))
        }));
        Ok(())
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
