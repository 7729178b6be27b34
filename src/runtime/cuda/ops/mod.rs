//! Typed launches of the kernels in `kernels/*.cu`: one function per kernel, its arguments in
//! the kernel's order, grid and block chosen here. Pointers are device addresses (`u64`,
//! 0 = null); counts are rows/columns.

use super::gpu::{cfg, Arg, Gpu};

mod gemv;
use crate::{Error, Result};
pub use gemv::*;

/// Where a norm / SiLU kernel writes the next Linear's input.
#[derive(Debug, Clone, Copy)]
pub enum ActOut {
    /// FP8 codes `[rows, n]` and per-row scales `[rows]` (for an FP8 Linear).
    Fp8 { q: u64, s: u64 },
    /// Int8 codes `[rows, n]` and per-row scales `[rows]` (for a W8A8-INT8 Linear).
    Int8 { q: u64, s: u64 },
    /// BF16 `[rows, n]` (for a dense Linear, or the lm_head).
    Bf16(u64),
}

impl ActOut {
    /// The kernels' trailing `q, s, out, int8` arguments.
    fn args(self) -> [Arg; 4] {
        match self {
            ActOut::Fp8 { q, s } => [Arg::U64(q), Arg::U64(s), Arg::U64(0), Arg::I32(0)],
            ActOut::Int8 { q, s } => [Arg::U64(q), Arg::U64(s), Arg::U64(0), Arg::I32(1)],
            ActOut::Bf16(o) => [Arg::U64(0), Arg::U64(0), Arg::U64(o), Arg::I32(0)],
        }
    }
}

/// Threads of the one-block-per-row kernels (at most their `__launch_bounds__(512)`).
fn row_threads(n: usize) -> u32 {
    if n >= 4096 {
        512
    } else {
        256
    }
}

fn i32_of(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Runtime(format!("{what} {v} exceeds the kernel's range")))
}

/// `x[r] = f32(table[ids[r]])`, `n` columns.
pub fn embed_gather(g: &Gpu, table: u64, ids: u64, rows: usize, n: usize, x: u64) -> Result<()> {
    let args = [
        Arg::U64(table),
        Arg::U64(ids),
        Arg::I32(i32_of("width", n)?),
        Arg::U64(x),
    ];
    g.launch("embed_gather", cfg((rows as u32, 1), 256, 0), &args)
}

/// Residual add (when `delta` != 0) + RMSNorm of `rows` rows of width `n` into `out`.
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm(
    g: &Gpu,
    x: u64,
    delta: u64,
    w: u64,
    eps: f32,
    rows: usize,
    n: usize,
    out: ActOut,
) -> Result<()> {
    let [q, s, o, int8] = out.args();
    let args = [
        Arg::U64(x),
        Arg::U64(delta),
        Arg::U64(w),
        Arg::F32(eps),
        Arg::I32(i32_of("width", n)?),
        q,
        s,
        o,
        int8,
    ];
    g.launch(
        "add_rmsnorm",
        cfg((rows as u32, 1), row_threads(n), 0),
        &args,
    )
}

/// `silu(gate) * up` of `gu` (`[rows, 2*inter]`) into `out`.
pub fn silu_mul(g: &Gpu, gu: u64, rows: usize, inter: usize, out: ActOut) -> Result<()> {
    let [q, s, o, int8] = out.args();
    let args = [
        Arg::U64(gu),
        Arg::I32(i32_of("width", inter)?),
        q,
        s,
        o,
        int8,
    ];
    g.launch(
        "silu_mul",
        cfg((rows as u32, 1), row_threads(inter), 0),
        &args,
    )
}

/// Per-row FP8 or int8 quantization of a bf16 `[rows, n]` matrix (`out` FP8 or Int8).
pub fn quant_rows(g: &Gpu, x: u64, rows: usize, n: usize, out: ActOut) -> Result<()> {
    let [q, s, _, int8] = out.args();
    if matches!(out, ActOut::Bf16(_)) {
        return Err(Error::Runtime("quant_rows writes FP8 or int8 codes".into()));
    }
    let args = [Arg::U64(x), Arg::I32(i32_of("width", n)?), q, s, int8];
    g.launch(
        "quant_rows",
        cfg((rows as u32, 1), row_threads(n), 0),
        &args,
    )
}

/// FP8_BLOCK activations: bf16 `x` `[rows, n]` (n a multiple of 128) into FP8 codes `q` and
/// scales `s` `[rows, n / 128]`, per token and 128-column group (vLLM's
/// `per_token_group_quant_fp8`).
pub fn quant_groups(g: &Gpu, x: u64, rows: usize, n: usize, (q, s): (u64, u64)) -> Result<()> {
    let args = [
        Arg::U64(x),
        Arg::I32(i32_of("width", n)?),
        Arg::U64(q),
        Arg::U64(s),
    ];
    // A warp per group, up to 16 per block: a decode row's groups at once, not 4 at a time.
    let warps = (n / 128).clamp(1, 16) as u32;
    g.launch("quant_groups", cfg((rows as u32, 1), 32 * warps, 0), &args)
}

/// `y = bf16(sa[r] * (sw[c] * acc) (+ bias))` over `[rows, n]`; `sa = sw = 0`: no scaling.
#[allow(clippy::too_many_arguments)]
pub fn scale_epilogue(
    g: &Gpu,
    acc: u64,
    sa: u64,
    sw: u64,
    bias: u64,
    rows: usize,
    n: usize,
    y: u64,
) -> Result<()> {
    let args = [
        Arg::U64(acc),
        Arg::U64(sa),
        Arg::U64(sw),
        Arg::U64(bias),
        Arg::I32(i32_of("width", n)?),
        Arg::U64(y),
    ];
    let grid = (rows as u32, n.div_ceil(256) as u32);
    g.launch("scale_epilogue", cfg(grid, 256, 0), &args)
}

/// Shapes and buffers of [`rope_qkv`] and [`attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Rotary embedding of the fused qkv output `[rows, (H+2KVH)*d]` at positions `pos..`
/// (`pos`: the address of an i32 on the device): q into `q_out`, k and v appended to the
/// caches. `qn`/`kn` are Qwen3's per-head norms (0 when absent).
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    g: &Gpu,
    dims: AttnDims,
    qkv: u64,
    rows: usize,
    pos: u64,
    (cos, sin): (u64, u64),
    (qn, kn, eps): (u64, u64, f32),
    (q_out, k_cache, v_cache): (u64, u64, u64),
) -> Result<()> {
    let warps = rows * (dims.heads + 2 * dims.kv_heads);
    let args = [
        Arg::U64(qkv),
        Arg::I32(i32_of("rows", rows)?),
        Arg::I32(dims.heads as i32),
        Arg::I32(dims.kv_heads as i32),
        Arg::I32(dims.head_dim as i32),
        Arg::U64(pos),
        Arg::U64(cos),
        Arg::U64(sin),
        Arg::U64(qn),
        Arg::U64(kn),
        Arg::F32(eps),
        Arg::U64(q_out),
        Arg::U64(k_cache),
        Arg::U64(v_cache),
    ];
    g.launch(
        "rope_qkv",
        cfg((warps.div_ceil(8) as u32, 1), 256, 0),
        &args,
    )
}

/// Query rows per attention block: work items (rows × group) at most 32 (8 warps × 4).
pub fn attention_rows_per_block(dims: AttnDims, rows: usize) -> usize {
    let group = dims.heads / dims.kv_heads;
    (32 / group).clamp(1, 8).min(rows.max(1))
}

/// Dynamic shared memory of [`attention`] for `rq` rows per block.
pub fn attention_smem(dims: AttnDims, rq: usize) -> usize {
    let group = dims.heads / dims.kv_heads;
    rq * group * dims.head_dim * 4 + 2 * 32 * (dims.head_dim + 2) * 2
}

/// The most query rows a split (flash-decoding) attention takes, and the most splits.
pub const SPLIT_MAX_ROWS: usize = 16;
pub const SPLIT_MAX: usize = 64;

/// f32 count of the partial-state buffer a split attention needs at most.
pub fn attention_part_len(dims: AttnDims) -> usize {
    SPLIT_MAX * SPLIT_MAX_ROWS * dims.heads * (dims.head_dim + 2)
}

/// A split (flash-decoding) attention: `splits` blocks of at most `chunk` keys per (rows,
/// kv head), their states merged by `attention_combine`. The kernel shares out the keys
/// seen so far in whole 32-key tiles (a decode graph's split is that of the whole cache);
/// splits past the last key do nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub chunk: usize,
    pub splits: usize,
}

/// The split for `rows` query rows seeing at most `keys` keys (`None`: no split). Decode has
/// only `kv_heads` blocks of work, so long contexts are split until there are about two
/// blocks per SM, each taking at least `min_chunk` keys (256 by default; tests force smaller
/// ones). A decode graph takes the split of the whole cache, so that it serves every position.
pub fn attention_split(
    dims: AttnDims,
    rows: usize,
    keys: usize,
    sm_count: usize,
    min_chunk: usize,
) -> Option<Split> {
    let min_chunk = min_chunk.max(1).next_multiple_of(32);
    if rows > SPLIT_MAX_ROWS || keys <= min_chunk {
        return None;
    }
    let blocks = rows.div_ceil(attention_rows_per_block(dims, rows)) * dims.kv_heads;
    let want = (2 * sm_count).div_ceil(blocks).clamp(1, SPLIT_MAX);
    let splits = want.min(keys.div_ceil(min_chunk));
    let chunk = keys.div_ceil(splits).next_multiple_of(32).max(min_chunk);
    let splits = keys.div_ceil(chunk);
    (splits > 1).then_some(Split { chunk, splits })
}

/// The buffers of one causal attention: `rows` query rows `q` (`[rows, H*d]` BF16) at
/// positions `pos..` (`pos`: the address of an i32 on the device) against cache positions
/// `0..pos+rows` of `cache` (K, V), into `out` (`[rows, H*d]` BF16), scores scaled by `scale`.
#[derive(Debug, Clone, Copy)]
pub struct AttnIo {
    pub q: u64,
    pub cache: (u64, u64),
    pub out: u64,
    pub rows: usize,
    pub pos: u64,
    pub scale: f32,
}

/// Causal attention ([`AttnIo`]): prefill chunks of more than [`SPLIT_MAX_ROWS`] rows on
/// tensor cores ([`attention_mma`]) when the head dim is 64, 128 or 256, else (decode)
/// [`attention_simt`], split when `split` is given.
pub fn attention(g: &Gpu, dims: AttnDims, io: AttnIo, split: Option<(Split, u64)>) -> Result<()> {
    if split.is_none() && io.rows > SPLIT_MAX_ROWS && mma_head_dim(dims.head_dim) {
        return attention_mma(g, dims, io);
    }
    attention_simt(g, dims, io, split)
}

/// Head dims [`attention_mma`] has a kernel for.
pub fn mma_head_dim(d: usize) -> bool {
    matches!(d, 64 | 128 | 256)
}

/// The kernel of [`attention_mma`] for head dim `d`, and its dynamic shared memory: a
/// 64-row q tile and a 32-key K tile of `d + 8` BF16 each, and V transposed, `d` rows of 40.
pub fn attention_mma_kernel(d: usize) -> (&'static str, usize) {
    let name = match d {
        64 => "attention_mma_64",
        128 => "attention_mma_128",
        _ => "attention_mma_256",
    };
    (name, ((64 + 32) * (d + 8) + d * 40) * 2)
}

/// Causal prefill attention on tensor cores (FlashAttention-2 style, probabilities rounded to
/// BF16 for the P·V product); head dims 64, 128, 256.
pub fn attention_mma(g: &Gpu, dims: AttnDims, io: AttnIo) -> Result<()> {
    if !mma_head_dim(dims.head_dim) {
        return Err(Error::Runtime(format!(
            "no tensor-core attention for head dim {}",
            dims.head_dim
        )));
    }
    let (name, smem) = attention_mma_kernel(dims.head_dim);
    let mut args = attention_args(dims, io)?;
    args.push(Arg::F32(io.scale));
    let grid = (io.rows.div_ceil(64) as u32, dims.heads as u32);
    g.launch(name, cfg(grid, 128, smem as u32), &args)
}

/// The arguments both attention kernels start with.
fn attention_args(dims: AttnDims, io: AttnIo) -> Result<Vec<Arg>> {
    Ok(vec![
        Arg::U64(io.q),
        Arg::U64(io.cache.0),
        Arg::U64(io.cache.1),
        Arg::U64(io.out),
        Arg::I32(i32_of("rows", io.rows)?),
        Arg::U64(io.pos),
        Arg::I32(dims.heads as i32),
        Arg::I32(dims.kv_heads as i32),
    ])
}

/// [`attention`] on CUDA cores: one warp per (query row, head), any head dim up to 256,
/// split over blocks of keys when `split` is given (decode).
pub fn attention_simt(
    g: &Gpu,
    dims: AttnDims,
    io: AttnIo,
    split: Option<(Split, u64)>,
) -> Result<()> {
    let rows = io.rows;
    let rq = attention_rows_per_block(dims, rows);
    let smem = attention_smem(dims, rq);
    // Unsplit: one block row takes every key.
    let (Split { chunk, splits }, part) = split.unwrap_or((
        Split {
            chunk: 1 << 30,
            splits: 1,
        },
        0,
    ));
    if splits > 1 && (rows > SPLIT_MAX_ROWS || splits > SPLIT_MAX || chunk % 32 != 0) {
        return Err(Error::Runtime(format!(
            "attention split of {rows} rows into {splits} x {chunk} keys is out of range"
        )));
    }
    let mut args = attention_args(dims, io)?;
    args.extend([
        Arg::I32(dims.head_dim as i32),
        Arg::I32(rq as i32),
        Arg::F32(io.scale),
        Arg::I32(i32_of("keys per split", chunk)?),
        Arg::U64(part),
    ]);
    let mut c = cfg(
        (rows.div_ceil(rq) as u32, dims.kv_heads as u32),
        256,
        smem as u32,
    );
    c.grid_dim.2 = splits as u32;
    g.launch("attention", c, &args)?;
    if splits == 1 {
        return Ok(());
    }
    let args = [
        Arg::U64(part),
        Arg::I32(splits as i32),
        Arg::I32(rows as i32),
        Arg::I32(dims.heads as i32),
        Arg::I32(dims.head_dim as i32),
        Arg::U64(io.out),
    ];
    let warps = rows * dims.heads;
    g.launch(
        "attention_combine",
        cfg((warps.div_ceil(8) as u32, 1), 256, 0),
        &args,
    )
}

/// The most candidates [`top_k_rows`] returns.
pub const TOP_K_MAX: usize = 1024;

/// `out[r]` = (value bits, index) of the argmax of `logits[r, 0..n]`, as two u32; the first
/// index wins ties, NaN never wins (all NaN: index 0).
pub fn argmax_rows(g: &Gpu, logits: u64, rows: usize, n: usize, out: u64) -> Result<()> {
    let args = [
        Arg::U64(logits),
        Arg::I32(i32_of("vocab", n)?),
        Arg::U64(out),
    ];
    g.launch("argmax_rows", cfg((rows as u32, 1), 1024, 0), &args)
}

/// `out[r][j]` = (value bits, index) of the `j`-th largest of `logits[r, 0..n]` for
/// `j < k`, best first: ties go to the lower index and NaN ranks below -inf, as
/// [`crate::runtime::sampler::top_candidates`] orders them.
pub fn top_k_rows(g: &Gpu, logits: u64, rows: usize, n: usize, k: usize, out: u64) -> Result<()> {
    if k == 0 || k > n.min(TOP_K_MAX) {
        return Err(Error::Runtime(format!(
            "top-k on the GPU needs 1 <= k <= {}, got {k}",
            n.min(TOP_K_MAX)
        )));
    }
    let args = [
        Arg::U64(logits),
        Arg::I32(i32_of("vocab", n)?),
        Arg::I32(k as i32),
        Arg::U64(out),
    ];
    g.launch("top_k_rows", cfg((rows as u32, 1), 1024, 0), &args)
}

fn fill_grid(g: &Gpu) -> (u32, u32) {
    ((g.info.sm_count.max(1) as u32) * 8, 1)
}

/// Random FP8 codes ~ e4m3(N(0,1)·112) (no NaN codes).
pub fn fill_fp8_normal(g: &Gpu, p: u64, n: usize, seed: u32) -> Result<()> {
    let args = [Arg::U64(p), Arg::U64(n as u64), Arg::U32(seed)];
    g.launch("fill_fp8_normal", cfg(fill_grid(g), 256, 0), &args)
}

/// Random BF16 values ~ mean + std·N(0,1).
pub fn fill_bf16_normal(g: &Gpu, p: u64, n: usize, seed: u32, mean: f32, std: f32) -> Result<()> {
    let args = [
        Arg::U64(p),
        Arg::U64(n as u64),
        Arg::U32(seed),
        Arg::F32(mean),
        Arg::F32(std),
    ];
    g.launch("fill_bf16_normal", cfg(fill_grid(g), 256, 0), &args)
}

/// `p[0..n] = v` (f32).
pub fn fill_f32(g: &Gpu, p: u64, n: usize, v: f32) -> Result<()> {
    let args = [Arg::U64(p), Arg::U64(n as u64), Arg::F32(v)];
    g.launch("fill_f32", cfg(fill_grid(g), 256, 0), &args)
}

/// The FP8 conversion probe: `codes = e4m3(input)` (n even), `back[0..256]` = every code
/// decoded.
pub fn fp8_probe(g: &Gpu, input: u64, n: usize, codes: u64, back: u64) -> Result<()> {
    let args = [
        Arg::U64(input),
        Arg::I32(n as i32),
        Arg::U64(codes),
        Arg::U64(back),
    ];
    let threads = (n / 2).max(128);
    g.launch(
        "fp8_probe",
        cfg((threads.div_ceil(256) as u32, 1), 256, 0),
        &args,
    )
}
