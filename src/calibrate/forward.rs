//! One Llama decoder layer's forward pass over one calibration sample, rounding where
//! transformers' BF16 `LlamaDecoderLayer` on the CPU rounds (torch keeps every intermediate
//! tensor in BF16; each op computes in f32 and rounds its result once):
//!
//! - RMSNorm: `w * bf16(x * rsqrt(mean(x²) + eps))` (the normalisation in f32, the mean
//!   summed in torch's order), rounded;
//! - Linear: f32-accumulated products rounded once, summed in the order of torch's CPU
//!   kernel ([`Dims::cpu`]: at::native's cpublas on AVX2, `torch_dot`; oneDNN on AVX-512
//!   BF16, `onednn`);
//! - RoPE: `cos`/`sin` rounded to BF16 (`.to(x.dtype)`), then `q·cos` and
//!   `rotate_half(q)·sin` each rounded, and their sum rounded;
//! - attention: transformers' *eager* attention, which llm-compressor forces during
//!   calibration (`calibration_forward_context` → `use_eager_attention`; a plain forward would
//!   use SDPA's flash kernel instead): `q·kᵀ` rounded, times the scale rounded, the causal mask
//!   added (a masked score becomes the BF16 minimum: its exponential is 0), the softmax in f32
//!   (`exp(s - max) · (1 / Σ)`, SLEEF's `exp`, torch's sum order) rounded, then `p·v` f32-accumulated and rounded (both
//!   matmuls in torch's summation orders, `torch_dot`);
//! - residual adds, SiLU and the gate product each rounded.
//!
//! Every activation is an `f32` holding a BF16 value. Observers see the tensors the
//! llm-compressor hooks see: each Linear's input, and the attention's key states after RoPE
//! and its value states (`QuantizedKVCache`, compressed-tensors `register_key_hook`).

use super::onednn;
use super::torch_dot::{self, TorchCpu};
use crate::runtime::config::ModelConfig;
use crate::runtime::cpu::ops::inv_freq;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The seven Linear modules of a Llama decoder layer, in module order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module path inside the layer (`self_attn.q_proj`).
    pub fn path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }
}

/// What the calibration hooks receive during a forward pass. Every slice is row-major
/// `[tokens, width]` of BF16 values.
pub trait Taps {
    /// The input of Linear `proj` (`calibrate_input_hook`, GPTQ's Hessian hook).
    fn linear_input(&mut self, proj: Proj, x: &[f32], width: usize);
    /// Key states after RoPE, `[tokens, kv_heads * head_dim]`.
    fn key(&mut self, k: &[f32]);
    /// Value states, `[tokens, kv_heads * head_dim]`.
    fn value(&mut self, v: &[f32]);
}

/// Taps that observe nothing (the propagation pass).
pub struct NoTaps;

impl Taps for NoTaps {
    fn linear_input(&mut self, _: Proj, _: &[f32], _: usize) {}
    fn key(&mut self, _: &[f32]) {}
    fn value(&mut self, _: &[f32]) {}
}

/// One layer's weights as f32 (each a BF16 value), Linear weights `[out, in]` row-major.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    /// Indexed like [`Proj::ALL`].
    pub linears: [Vec<f32>; 7],
    /// `[out, in]` of each Linear, indexed like [`Proj::ALL`].
    pub shapes: [(usize, usize); 7],
}

impl LayerWeights {
    pub fn linear(&self, p: Proj) -> &[f32] {
        &self.linears[p as usize]
    }
}

/// Shapes and constants of the forward pass.
#[derive(Debug, Clone)]
pub struct Dims {
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    /// Whose torch arithmetic the pass reproduces (its summation orders).
    pub cpu: TorchCpu,
}

impl Dims {
    /// The shapes of `c`, summing as torch on an AVX2 CPU.
    pub fn new(c: &ModelConfig) -> Dims {
        Dims {
            hidden: c.hidden_size,
            inter: c.intermediate_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps as f32,
            cpu: TorchCpu::default(),
        }
    }

    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// `(out, in)` of a Linear.
    pub fn shape(&self, p: Proj) -> (usize, usize) {
        match p {
            Proj::Q => (self.q_dim(), self.hidden),
            Proj::K | Proj::V => (self.kv_dim(), self.hidden),
            Proj::O => (self.hidden, self.q_dim()),
            Proj::Gate | Proj::Up => (self.inter, self.hidden),
            Proj::Down => (self.hidden, self.inter),
        }
    }
}

/// Round to the nearest BF16 (ties to even), kept as f32. NaN stays NaN.
#[inline]
pub fn bf16(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return x;
    }
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(r)
}

/// `y[t, out] = bf16(x[t, in] · w[out, in]ᵀ)`, each output summed in f32 in `cpu`'s order
/// and rounded once.
pub fn linear(
    cpu: TorchCpu,
    x: &[f32],
    w: &[f32],
    (t, out, inp): (usize, usize, usize),
    y: &mut Vec<f32>,
) {
    y.clear();
    y.resize(t * out, 0.0);
    if t == 0 || inp == 0 {
        return;
    }
    assert!(x.len() >= t * inp && w.len() >= out * inp);
    cpu.linear_sums(&x[..t * inp], &w[..out * inp], inp, y);
    for v in y.iter_mut() {
        *v = bf16(*v);
    }
}

/// transformers' LlamaRMSNorm on BF16 input: `bf16(w * bf16(x * rsqrt(mean(x²) + eps)))`.
fn rmsnorm(cpu: TorchCpu, x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.clear();
    let d = w.len();
    let mut sq = Vec::with_capacity(d);
    for row in x.chunks_exact(d) {
        // `pow(2).mean(-1)`: f32 squares, summed in torch's order, divided by the width.
        sq.clear();
        sq.extend(row.iter().map(|&v| v * v));
        let mean = cpu.sum(&sq) / d as f32;
        let r = 1.0 / (mean + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &g)| bf16(g * bf16(v * r))));
    }
}

/// transformers' `apply_rotary_pos_emb` in BF16 on `[t, heads*head_dim]`, positions 0...
fn rope(x: &mut [f32], width: usize, rope: &BfRope) {
    let h = rope.half;
    for (p, row) in x.chunks_exact_mut(width).enumerate() {
        let (c, s) = (&rope.cos[p * h..(p + 1) * h], &rope.sin[p * h..(p + 1) * h]);
        for head in row.chunks_exact_mut(2 * h) {
            let (x1, x2) = head.split_at_mut(h);
            for j in 0..h {
                let (a, b) = (x1[j], x2[j]);
                x1[j] = bf16(bf16(a * c[j]) + bf16(-b * s[j]));
                x2[j] = bf16(bf16(b * c[j]) + bf16(a * s[j]));
            }
        }
    }
}

/// The rotary tables as transformers hands them to the attention: f32 `cos`/`sin` rounded
/// to the activations' dtype.
#[derive(Debug, Clone)]
pub struct BfRope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl BfRope {
    pub fn new(c: &ModelConfig, max_seq: usize) -> BfRope {
        let inv = inv_freq(&c.rope, c.head_dim);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..max_seq {
            for &f in &inv {
                // The angle is an f32 product (transformers' f32 matmul of one term).
                let a = (p as f32 * f) as f64;
                cos.push(bf16(a.cos() as f32));
                sin.push(bf16(a.sin() as f32));
            }
        }
        BfRope {
            half: c.head_dim / 2,
            cos,
            sin,
        }
    }

    pub fn max_seq(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// Causal GQA attention as transformers' eager attention computes it in BF16 (module docs).
fn attention(q: &[f32], k: &[f32], v: &[f32], t: usize, d: &Dims, out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above). The body is plain safe Rust: the
        // attribute lets the compiler vectorise `p·v` and inline the `exp`'s rounding and
        // fused multiply-adds (otherwise library calls). Same results either way.
        return unsafe { attention_avx2(q, k, v, t, d, out) };
    }
    attention_body(q, k, v, t, d, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_avx2(q: &[f32], k: &[f32], v: &[f32], t: usize, d: &Dims, out: &mut Vec<f32>) {
    attention_body(q, k, v, t, d, out)
}

#[inline(always)]
fn attention_body(q: &[f32], k: &[f32], v: &[f32], t: usize, d: &Dims, out: &mut Vec<f32>) {
    let (hd, qw, kw) = (d.head_dim, d.q_dim(), d.kv_dim());
    let group = d.heads / d.kv_heads;
    // `scaling` is a Python float; torch multiplies a BF16 tensor by it in f32.
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    out.clear();
    out.resize(t * qw, 0.0);
    let mut p = vec![0f32; t];
    // One head's queries and keys, `[t, head_dim]`, and the scores `q·kᵀ` of a block of
    // queries against the keys up to the block's last: each score is a Linear-shaped dot
    // product in torch's order (`torch_dot`), so the Linear kernel computes them all at
    // once (the masked corner of the block too, then ignored; the rest of the masked half
    // is never computed).
    let (mut qh, mut kh) = (vec![0f32; t * hd], vec![0f32; t * hd]);
    let mut scores = vec![0f32; t.min(QUERY_BLOCK) * t];
    for h in 0..d.heads {
        let kvh = h / group;
        for i in 0..t {
            qh[i * hd..(i + 1) * hd].copy_from_slice(&q[i * qw + h * hd..][..hd]);
            kh[i * hd..(i + 1) * hd].copy_from_slice(&k[i * kw + kvh * hd..][..hd]);
        }
        for r0 in (0..t).step_by(QUERY_BLOCK) {
            let r1 = (r0 + QUERY_BLOCK).min(t);
            let block = &mut scores[..(r1 - r0) * r1];
            d.cpu
                .linear_sums(&qh[r0 * hd..r1 * hd], &kh[..r1 * hd], hd, block);
            for i in r0..r1 {
                let row = &block[(i - r0) * r1..];
                let mut max = f32::NEG_INFINITY;
                for (pj, &s) in p[..=i].iter_mut().zip(row) {
                    *pj = bf16(bf16(s) * scale);
                    max = max.max(*pj);
                }
                // The masked scores' exponentials are 0: the sum runs over the whole row of t.
                for pj in &mut p[..=i] {
                    *pj = torch_dot::exp(*pj - max);
                }
                let inv = 1.0 / d.cpu.reduce_all_sum(&p[..=i], t);
                for pj in &mut p[..=i] {
                    *pj = bf16(*pj * inv);
                }
                // The masked probabilities are 0 and add nothing; the sums keep their places
                // (element j into running sum j % 4) because every row starts at j = 0.
                let o = &mut out[i * qw + h * hd..i * qw + (h + 1) * hd];
                probs_times_values(d.cpu, &p[..=i], &v[kvh * hd..], kw, o);
            }
        }
    }
}

/// Queries whose scores are computed together (against the keys up to the last of them).
pub(crate) const QUERY_BLOCK: usize = 64;

/// `o[c] = bf16(Σ_j p[j]·v[j·stride + c])` for each channel `c` of `o`, each sum in `cpu`'s
/// order ([`torch_dot::dot_ilp4`] on AVX2, [`onednn::pair_order`] on AVX-512 BF16),
/// computed for 16 channels at once (vectorised across channels: each channel's additions
/// stay in that order).
#[inline(always)]
fn probs_times_values(cpu: TorchCpu, p: &[f32], v: &[f32], stride: usize, o: &mut [f32]) {
    const CH: usize = 16;
    if cpu == TorchCpu::Avx512Bf16 {
        for (c0, oc) in (0..).step_by(CH).zip(o.chunks_mut(CH)) {
            let mut s = [0f32; CH];
            for j in onednn::pair_order(p.len()) {
                let vr = &v[j * stride + c0..][..oc.len()];
                for (a, &x) in s.iter_mut().zip(vr) {
                    *a += p[j] * x;
                }
            }
            for (oc, &s) in oc.iter_mut().zip(&s) {
                *oc = bf16(s);
            }
        }
        return;
    }
    let main = p.len() & !3;
    for (c0, oc) in (0..).step_by(CH).zip(o.chunks_mut(CH)) {
        let n = oc.len();
        let mut s = [[0f32; CH]; 4];
        let mut add = |m: usize, j: usize| {
            let vr = &v[j * stride + c0..][..n];
            for (a, &x) in s[m][..n].iter_mut().zip(vr) {
                *a += p[j] * x;
            }
        };
        for j in (0..main).step_by(4) {
            for m in 0..4 {
                add(m, j + m);
            }
        }
        for j in main..p.len() {
            add(0, j);
        }
        for (c, oc) in oc.iter_mut().enumerate() {
            *oc = bf16(((s[0][c] + s[1][c]) + s[2][c]) + s[3][c]);
        }
    }
}

/// Reusable buffers of one forward pass.
#[derive(Default)]
pub struct Scratch {
    n: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
}

/// Runs one decoder layer over `x` (`[t, hidden]`, one sample at positions 0..t) in place,
/// feeding the hooks' tensors to `taps`. With `outputs` false it stops once the last hook
/// (down_proj's input) has seen its tensor: `x` is then not the layer's output (for a
/// calibration pass whose outputs the propagation pass recomputes).
pub fn layer_forward(
    w: &LayerWeights,
    d: &Dims,
    rope_t: &BfRope,
    x: &mut [f32],
    taps: &mut dyn Taps,
    s: &mut Scratch,
    outputs: bool,
) {
    let mut n = std::mem::take(&mut s.n);
    rmsnorm(d.cpu, x, &w.input_norm, d.eps, &mut n);
    attention_block(w, d, rope_t, &n, taps, s);
    for (r, &o) in x.iter_mut().zip(&s.o) {
        *r = bf16(*r + o);
    }
    rmsnorm(d.cpu, x, &w.post_norm, d.eps, &mut n);
    mlp_input(w, d, &n, taps, s);
    if outputs {
        down(w, d, s);
        for (r, &o) in x.iter_mut().zip(&s.o) {
            *r = bf16(*r + o);
        }
    }
    s.n = n;
}

static FORWARD_NANOS: AtomicU64 = AtomicU64::new(0);
static FORWARD_TOKEN_LAYERS: AtomicU64 = AtomicU64::new(0);

/// Counts `spent` (wall time of layer passes, their hooks' work excluded) and the tokens
/// that went through a layer in it, for [`print_timings`].
pub fn count_forward(spent: Duration, token_layers: u64) {
    FORWARD_NANOS.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    FORWARD_TOKEN_LAYERS.fetch_add(token_layers, Ordering::Relaxed);
}

/// With `QFORGE_TIMINGS=1` (a developer switch, for scripts/bench_calib_forward.sh), prints
/// to stderr the wall time spent in [`layer_forward`] so far, less its hooks', and the
/// tokens it ran through a layer: `calibration forward: S s, N token-layers`.
pub fn print_timings() {
    if std::env::var_os("QFORGE_TIMINGS").is_some_and(|v| v == "1") {
        eprintln!(
            "calibration forward: {:.3} s, {} token-layers",
            FORWARD_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
            FORWARD_TOKEN_LAYERS.load(Ordering::Relaxed)
        );
    }
}

/// transformers' `LlamaAttention` on the normed input `n` (`[t, hidden]`): q/k/v, RoPE,
/// attention, o_proj; the output (`[t, hidden]`) is left in [`Scratch::out`].
pub fn attention_block(
    w: &LayerWeights,
    d: &Dims,
    rope_t: &BfRope,
    n: &[f32],
    taps: &mut dyn Taps,
    s: &mut Scratch,
) {
    let t = n.len() / d.hidden;
    let lin = |p: Proj, input: &[f32], y: &mut Vec<f32>| {
        let (o, i) = d.shape(p);
        linear(d.cpu, input, w.linear(p), (t, o, i), y);
    };
    for p in [Proj::Q, Proj::K, Proj::V] {
        taps.linear_input(p, n, d.hidden);
    }
    lin(Proj::Q, n, &mut s.q);
    lin(Proj::K, n, &mut s.k);
    lin(Proj::V, n, &mut s.v);
    rope(&mut s.q, d.q_dim(), rope_t);
    rope(&mut s.k, d.kv_dim(), rope_t);
    taps.key(&s.k);
    taps.value(&s.v);
    attention(&s.q, &s.k, &s.v, t, d, &mut s.a);
    taps.linear_input(Proj::O, &s.a, d.q_dim());
    lin(Proj::O, &s.a, &mut s.o);
}

/// transformers' `LlamaMLP` on the normed input `n` (`[t, hidden]`):
/// `down(silu(gate(n)) * up(n))`, left in [`Scratch::out`].
pub fn mlp_block(w: &LayerWeights, d: &Dims, n: &[f32], taps: &mut dyn Taps, s: &mut Scratch) {
    mlp_input(w, d, n, taps, s);
    down(w, d, s);
}

/// The MLP up to down_proj's input `silu(gate(n)) * up(n)`, left in the scratch.
fn mlp_input(w: &LayerWeights, d: &Dims, n: &[f32], taps: &mut dyn Taps, s: &mut Scratch) {
    let t = n.len() / d.hidden;
    let lin = |p: Proj, y: &mut Vec<f32>| {
        let (o, i) = d.shape(p);
        linear(d.cpu, n, w.linear(p), (t, o, i), y);
    };
    for p in [Proj::Gate, Proj::Up] {
        taps.linear_input(p, n, d.hidden);
    }
    lin(Proj::Gate, &mut s.g);
    lin(Proj::Up, &mut s.u);
    for (g, &u) in s.g.iter_mut().zip(&s.u) {
        let silu = bf16(*g / (1.0 + (-*g).exp()));
        *g = bf16(silu * u);
    }
    taps.linear_input(Proj::Down, &s.g, d.inter);
}

/// down_proj over the input [`mlp_input`] left, into [`Scratch::out`].
fn down(w: &LayerWeights, d: &Dims, s: &mut Scratch) {
    let t = s.g.len() / d.inter.max(1);
    let (o, i) = d.shape(Proj::Down);
    linear(d.cpu, &s.g, w.linear(Proj::Down), (t, o, i), &mut s.o);
}

impl Scratch {
    /// The output of the last [`attention_block`] or [`mlp_block`].
    pub fn out(&self) -> &[f32] {
        &self.o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2.0 * 2f32.powi(-7));
        assert_eq!(bf16(-0.1), f32::from_bits(0xBDCD_0000));
    }

    #[test]
    fn probs_times_values_sums_each_channel_in_the_cpus_order() {
        // Large terms that cancel, so that another order shows in the last bits; lengths
        // with every remainder mod 4, channel counts with a partial block of 16.
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let v = ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            bf16(if seed >> 62 == 0 { v * 512.0 } else { v })
        };
        type Dot = fn(&[f32], &[f32]) -> f32;
        let orders: [(TorchCpu, Dot); 2] = [
            (TorchCpu::Avx2, torch_dot::dot_ilp4),
            (TorchCpu::Avx512Bf16, onednn::dot),
        ];
        for (len, ch, stride) in [(1, 64, 64), (7, 64, 192), (130, 40, 40), (257, 21, 30)] {
            let p: Vec<f32> = (0..len).map(|_| next()).collect();
            let v: Vec<f32> = (0..len * stride).map(|_| next()).collect();
            for (cpu, dot) in orders {
                let mut o = vec![0f32; ch];
                probs_times_values(cpu, &p, &v, stride, &mut o);
                for (c, &got) in o.iter().enumerate() {
                    let col: Vec<f32> = (0..len).map(|j| v[j * stride + c]).collect();
                    let want = bf16(dot(&p, &col));
                    assert_eq!(got.to_bits(), want.to_bits(), "{cpu:?} len {len} ch {c}");
                }
            }
        }
    }

    #[test]
    fn linear_matches_a_plain_dot_product() {
        let x: Vec<f32> = (0..6).map(|i| bf16(i as f32 * 0.37 - 1.0)).collect();
        let w: Vec<f32> = (0..12).map(|i| bf16((i as f32 * 0.11).sin())).collect();
        let mut y = Vec::new();
        linear(TorchCpu::Avx2, &x, &w, (2, 4, 3), &mut y);
        for r in 0..2 {
            for c in 0..4 {
                let dot: f32 = (0..3).map(|k| x[r * 3 + k] * w[c * 3 + k]).sum();
                assert!((y[r * 4 + c] - bf16(dot)).abs() <= bf16(dot).abs() * 1e-2);
            }
        }
    }
}
