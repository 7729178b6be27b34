//! The f32 summation orders (and the `exp`) of torch 2.14's CPU kernels in the BF16
//! forward pass, on an x86 CPU without AVX-512, so that the calibration forward rounds every
//! Linear, attention product and norm exactly as the reference does. Products of two BF16
//! values are exact in f32, so only the order of the additions matters:
//!
//! - [`dot`], [`linear_sums`]: `F.linear` and `q·kᵀ`. Without AVX-512 torch has no oneDNN
//!   BF16 matmul (`mkldnn_bf16_device_check` fails) and takes at::native's `cpublas::gemm` →
//!   `gemm_transa_` → `dot_with_fp32_arith_no_bfdot` (ReducedPrecisionFloatGemvFastPathKernel):
//!   8 AVX2 registers of 8 f32 lanes, so 64 running sums, element `j` into sum `j % 64`;
//!   the 64 are added by halving (registers 0..4 += 4..8, 0..2 += 2..4, 0 += 1, then the
//!   lanes the same way, `vec_reduce_all`); then a 16-wide tail into 8 lanes (low half, then
//!   high half), halved and added; then the last `len % 16` one by one.
//! - [`sum`]: RMSNorm's `mean(x²)` (a cascade of vector running sums, below).
//! - [`reduce_all_sum`] and [`exp`]: the softmax's `Σ exp(s - max)`, with SLEEF's `expf`.
//! - [`dot_ilp4`]: `p·v` (its right operand is not transposed: `gemm_notrans_`, whose BF16
//!   version sums with at::native's `sum` helper): 4 running sums, element `j` into sum
//!   `j % 4` (the remainder into sum 0), then `((s0 + s1) + s2) + s3`.
//!
//! Measured (`/work/refvenv`, torch 2.14.0 on an AMD EPYC with AVX2 + FMA): these orders
//! reproduce torch's BF16 `F.linear` and both attention matmuls in every output of
//! adversarial inputs (large terms that cancel, so that the order shows in the rounding to
//! BF16), for K = 16, 100, 128, 200, 384, 576, 1536; a plain running sum differs in 1.1–1.5%
//! of those outputs.
//!
//! A CPU with AVX-512 BF16 sums in other orders ([`TorchCpu::Avx512Bf16`]): torch takes
//! oneDNN's BF16 matmul there (`super::onednn`), and its vectorised sums have 16 lanes.

/// The CPU whose torch arithmetic the calibration forward reproduces: llm-compressor's
/// result depends on it, qforge's does not (any machine can compute either order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TorchCpu {
    /// an x86 CPU with AVX2 and FMA but no AVX-512
    // The orders of this module.
    #[default]
    Avx2,
    /// an x86 CPU with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake; not checked on
    /// Intel CPUs with AMX, where oneDNN takes other kernels)
    // oneDNN's BF16 matmul for `F.linear` and both attention products (`super::onednn`),
    // 16-lane sums elsewhere.
    #[value(name = "avx512-bf16")]
    Avx512Bf16,
}

impl TorchCpu {
    /// The name of `--reference-cpu`.
    pub fn name(self) -> &'static str {
        match self {
            TorchCpu::Avx2 => "avx2",
            TorchCpu::Avx512Bf16 => "avx512-bf16",
        }
    }

    /// `y[r, o] = Σ x[r, ·]·w[o, ·]` (unrounded) as this CPU's `F.linear` sums it.
    pub fn linear_sums(self, x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
        match self {
            TorchCpu::Avx2 => linear_sums(x, w, k, y),
            TorchCpu::Avx512Bf16 => super::onednn::linear_sums(x, w, k, y),
        }
    }

    /// `Σ x[i]` as this CPU's `sum`/`mean` over a contiguous f32 row ([`sum`]).
    pub fn sum(self, x: &[f32]) -> f32 {
        match self {
            TorchCpu::Avx2 => cascade_sum::<8>(x),
            TorchCpu::Avx512Bf16 => cascade_sum::<16>(x),
        }
    }

    /// `Σ x[i]` as this CPU's `vec::reduce_all(+)` ([`reduce_all_sum`]).
    pub fn reduce_all_sum(self, x: &[f32], row_len: usize) -> f32 {
        match self {
            TorchCpu::Avx2 => reduce_all::<8>(x, row_len),
            TorchCpu::Avx512Bf16 => reduce_all::<16>(x, row_len),
        }
    }
}

/// Multiply-adds below which one thread does a whole product (a rayon split costs more).
const PARALLEL_MIN: usize = 1 << 20;

/// Runs `f(r0, r1, y_rows)` over ranges of whole `tile`-row tiles of `y` (`[rows, out]`),
/// shared among rayon's threads when the product (`rows × out × k` multiply-adds) is large
/// enough: each output is still one thread's sum, so the result does not depend on it.
pub(super) fn par_row_tiles(
    y: &mut [f32],
    (rows, out, k): (usize, usize, usize),
    tile: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    let tiles = rows.div_ceil(tile);
    let jobs = if rows * out * k < PARALLEL_MIN {
        1
    } else {
        rayon::current_num_threads().clamp(1, tiles)
    };
    let job_rows = tiles.div_ceil(jobs) * tile;
    let run = |(j, yj): (usize, &mut [f32])| {
        let r0 = j * job_rows;
        f(r0, (r0 + job_rows).min(rows), yj)
    };
    let y = &mut y[..rows * out];
    if jobs > 1 {
        y.par_chunks_mut(job_rows * out).enumerate().for_each(run);
    } else {
        run((0, y));
    }
}

/// Running sums of the main loop: 8 registers × 8 f32 lanes (AVX2).
const BLOCK: usize = 64;
/// f32 lanes of one register.
const LANES: usize = 8;
/// BF16 elements of one register: the step of the vectorised tail.
const BF16_STEP: usize = 16;

/// Adds `v` by halving: `v[i] += v[i + n/2]` down to one value (`v.len()` a power of 2).
#[inline(always)]
fn halve(v: &mut [f32]) -> f32 {
    let mut n = v.len();
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let main = len & !(BLOCK - 1);
    let mut acc = [0f32; BLOCK];
    for (ca, cb) in a[..main]
        .chunks_exact(BLOCK)
        .zip(b[..main].chunks_exact(BLOCK))
    {
        // A fused multiply-add, as torch's `vec::fmadd`: the same as `acc + a·b` whenever
        // the product of two BF16 values is exact (all but f32-subnormal products).
        for i in 0..BLOCK {
            acc[i] = ca[i].mul_add(cb[i], acc[i]);
        }
    }
    let mut sum = halve(&mut acc);
    let vec_end = len & !(BF16_STEP - 1);
    let mut tail = [0f32; LANES];
    for j in (main..vec_end).step_by(BF16_STEP) {
        for l in 0..LANES {
            tail[l] = a[j + l].mul_add(b[j + l], tail[l]);
        }
        for l in 0..LANES {
            tail[l] = a[j + LANES + l].mul_add(b[j + LANES + l], tail[l]);
        }
    }
    // Added even when empty, as torch does (it turns a -0.0 sum into +0.0).
    sum += halve(&mut tail);
    for j in vec_end..len {
        sum += a[j] * b[j];
    }
    sum
}

/// `y[r, o] = Σ x[r, ·]·w[o, ·]` in [`dot`]'s order, unrounded: `x` is `[rows, k]`, `w` is
/// `[out, k]`, `y` is `[rows, out]`, all row-major (the f32 sums of `F.linear`).
pub fn linear_sums(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { super::torch_gemm::linear_sums(x, w, k, y) };
    }
    linear_sums_portable(x, w, k, y)
}

/// Token rows per pass over the weight: each weight row is read once per block of rows,
/// not once per row (the weight does not fit in the cache, the block of rows does).
const ROW_BLOCK: usize = 16;

/// [`linear_sums`] one [`dot`] per output: the portable body, and the order the AVX2 kernel
/// (`torch_gemm`) is tested against.
pub fn linear_sums_portable(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    let out = w.len() / k;
    for (xb, yb) in x.chunks(ROW_BLOCK * k).zip(y.chunks_mut(ROW_BLOCK * out)) {
        for (o, wr) in w.chunks_exact(k).enumerate() {
            for (r, xr) in xb.chunks_exact(k).enumerate() {
                yb[r * out + o] = dot(xr, wr);
            }
        }
    }
}

/// `Σ a[i]·b[i]` over BF16 values in torch's `dot_with_fp32_arith` order (module docs).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: as in `linear_sums`.
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

/// `Σ a[i]·b[i]` in at::native's `sum` order with 4 running sums (module docs).
pub fn dot_ilp4(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let mut s = [0f32; 4];
    let main = len & !3;
    for (ca, cb) in a[..main].chunks_exact(4).zip(b[..main].chunks_exact(4)) {
        for k in 0..4 {
            s[k] += ca[k] * cb[k];
        }
    }
    for j in main..len {
        s[0] += a[j] * b[j];
    }
    ((s[0] + s[1]) + s[2]) + s[3]
}

/// `to[l] += from[l]` for each lane: one vector add.
fn add_lanes<const L: usize>(to: &mut [f32; L], from: &[f32; L]) {
    for (t, &f) in to.iter_mut().zip(from) {
        *t += f;
    }
}

/// `Σ x[i]` in the order of torch's `sum`/`mean` over a contiguous last dimension of f32
/// (`cascade_sum` → `vectorized_inner_sum`, SumKernel.cpp, AVX2): the row is read as
/// 8-lane vectors, 4 of them at a time into 4 vector running sums (`row_sum`, ilp 4),
/// through `multi_row_sum`'s levels (each level folds 16 rounds of the one below); then
/// sums 1..4 are added to sum 0 one by one, and the scalar tail and sum 0's lanes, in lane
/// order, are added to 0.
pub fn sum(x: &[f32]) -> f32 {
    cascade_sum::<LANES>(x)
}

/// [`sum`] with `L`-lane vectors (8 on AVX2, 16 on AVX-512: the same code in torch).
fn cascade_sum<const L: usize>(x: &[f32]) -> f32 {
    let vecs = x.len() / L;
    let rounds = vecs / 4;
    // multi_row_sum: `level_power = max(4, ceil_log2(rounds) / 4)`, 4 levels.
    let ceil_log2 = if rounds <= 1 {
        0
    } else {
        usize::BITS - (rounds - 1).leading_zeros()
    };
    let power = (ceil_log2 as usize / 4).max(4);
    let step = 1usize << power;
    let mut acc = [[[0f32; L]; 4]; 4];
    let add_vec = |to: &mut [f32; L], v: usize| {
        for (t, &e) in to.iter_mut().zip(&x[v * L..(v + 1) * L]) {
            *t += e;
        }
    };
    let mut i = 0;
    while i + step <= rounds {
        for _ in 0..step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add_vec(a, i * 4 + k);
            }
            i += 1;
        }
        for j in 1..4 {
            // Level j takes level j - 1's sums, which start again from 0.
            let below = std::mem::replace(&mut acc[j - 1], [[0.0; L]; 4]);
            for (to, from) in acc[j].iter_mut().zip(&below) {
                add_lanes(to, from);
            }
            if i & ((step - 1) << (j * power)) != 0 {
                break;
            }
        }
    }
    while i < rounds {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add_vec(a, i * 4 + k);
        }
        i += 1;
    }
    let mut s = acc[0];
    for level in &acc[1..] {
        for (to, from) in s.iter_mut().zip(level) {
            add_lanes(to, from);
        }
    }
    for v in rounds * 4..vecs {
        add_vec(&mut s[0], v);
    }
    let (first, rest) = s.split_at_mut(1);
    for from in rest.iter() {
        add_lanes(&mut first[0], from);
    }
    let mut total = 0f32;
    for &e in &x[vecs * L..] {
        total += e;
    }
    for &l in &s[0] {
        total += l;
    }
    total
}

/// `Σ x[i]` as torch's `vec::reduce_all(+)` over a row of `row_len` f32 (`x` its first
/// elements, the rest zeros): 8 lanes, element `j` into lane `j % 8`, then halved; a row
/// shorter than one vector is summed in order. The softmax's `Σ exp`.
pub fn reduce_all_sum(x: &[f32], row_len: usize) -> f32 {
    reduce_all::<LANES>(x, row_len)
}

/// [`reduce_all_sum`] with `L` lanes.
fn reduce_all<const L: usize>(x: &[f32], row_len: usize) -> f32 {
    if row_len < L {
        return x.iter().fold(0.0, |s, &v| s + v);
    }
    let mut acc = [0f32; L];
    for (j, &v) in x.iter().enumerate() {
        acc[j % L] += v;
    }
    halve(&mut acc)
}

/// `exp(d)` in f32 as torch's `Vectorized<float>::exp` computes it on AVX2: SLEEF's
/// `expf8_u10` (`xexpf`: `q = rint(d / ln 2)`, a two-part reduction, a degree-6 polynomial
/// with fused multiply-adds, `ldexp` in two halves). Not correctly rounded: it differs from
/// the nearest f32 in about 10% of the softmax's arguments, which is why it is spelled out.
pub fn exp(d: f32) -> f32 {
    const R_LN2: f32 = std::f32::consts::LOG2_E;
    const L2U: f32 = 0.693_145_75;
    const L2L: f32 = 1.428_606_8e-6;
    if d < -104.0 {
        return 0.0;
    }
    if d > 100.0 {
        return f32::INFINITY;
    }
    let q = (d * R_LN2).round_ties_even();
    let s = q.mul_add(-L2U, d);
    let s = q.mul_add(-L2L, s);
    let mut u = 0.000_198_527_62_f32;
    for c in [
        0.001_393_043_6,
        0.008_333_361,
        0.041_666_485,
        0.166_666_67,
        0.5,
    ] {
        u = u.mul_add(s, c);
    }
    let u = 1.0 + (s * s).mul_add(u, s);
    // ldexp in two halves, so that neither power of 2 overflows.
    let q = q as i32;
    let pow2 = |e: i32| f32::from_bits(((e + 0x7f) as u32) << 23);
    u * pow2(q >> 1) * pow2(q - (q >> 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: f32 = 1.0 / 16_777_216.0; // 2^-24: 1 + TINY rounds back to 1 (a tie, to even)
    /// `x.sum()` of the rows in `sum_matches_torch_on_cancelling_squares`, torch 2.14 (AVX2);
    /// a running sum gives 0x46f7_803f and 0x489f_bffe.
    const TORCH_SUM_128: u32 = 0x46f7_803e;
    const TORCH_SUM_576: u32 = 0x489f_c000;

    #[test]
    fn main_loop_keeps_64_running_sums_then_halves() {
        // Elements 0, 32, 64, 96: 0 and 64 share running sum 0 (1 + TINY = 1), 32 and 96
        // share sum 32 (2·TINY), which the halving adds to sum 0: 1 + 2^-23 survives.
        let b = vec![1f32; 128];
        let mut a = vec![0f32; 128];
        a[0] = 1.0;
        a[32] = TINY;
        a[64] = TINY;
        assert_eq!(dot(&a, &b), 1.0);
        a[96] = TINY;
        assert_eq!(dot(&a, &b), 1.0 + 2.0 * TINY);
        // A running sum in index order loses each small term against the 1.
        let running: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(running, 1.0);
    }

    #[test]
    fn tail_sums_low_then_high_half_per_lane() {
        // len 16: no main loop; lane 0 gets element 0 then element 8.
        let b = vec![1f32; 16];
        let mut a = vec![0f32; 16];
        a[0] = 1.0;
        a[8] = TINY;
        a[1] = TINY;
        // lane 0 = 1 + TINY = 1; lane 1 = TINY; halving adds lane 1 to lane 0 last: 1.
        assert_eq!(dot(&a, &b), 1.0);
        a[9] = TINY;
        // lane 1 = 2·TINY: kept.
        assert_eq!(dot(&a, &b), 1.0 + 2.0 * TINY);
    }

    #[test]
    fn every_length_sums_every_element() {
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 80, 100, 127, 200, 384] {
            let a: Vec<f32> = (0..len).map(|i| (i % 5) as f32).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 3) as f32).collect();
            // Small integers: every order gives the exact sum.
            let exact: f32 = (0..len).map(|i| ((i % 5) * (i % 3)) as f32).sum();
            assert_eq!(dot(&a, &b), exact, "len {len}");
            assert_eq!(dot_ilp4(&a, &b), exact, "len {len}");
        }
    }

    #[test]
    fn ilp4_keeps_four_running_sums() {
        let b = [1f32; 8];
        // Elements 1 and 5 share running sum 1 (2·TINY), added to sum 0 (1) at the end.
        let a = [1.0, TINY, 0.0, 0.0, 0.0, TINY, 0.0, 0.0];
        assert_eq!(dot_ilp4(&a, &b), 1.0 + 2.0 * TINY);
        // Elements 0 and 4 share sum 0 with the 1: each is lost.
        let a = [1.0, 0.0, 0.0, 0.0, TINY, 0.0, 0.0, 0.0];
        assert_eq!(dot_ilp4(&a, &b), 1.0);
        let a = [TINY, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(dot_ilp4(&a, &b), 1.0);
    }

    #[test]
    fn exp_is_sleefs_not_the_nearest_f32() {
        // (argument, torch's softmax exponential, the correctly rounded exp): torch 2.14 on
        // AVX2 (values taken from `torch.softmax` through a SLEEF emulation that matched all
        // 1,280,000 of its outputs).
        for (d, sleef, nearest) in [
            (-2.468_75f32, 0x3dad_724c_u32, 0x3dad_724b_u32),
            (-3.921_875, 0x3ca2_3bd8, 0x3ca2_3bd9),
            (-1.585_937_5, 0x3e51_ab7e, 0x3e51_ab7d),
            (-0.5, 0x3f1b_4598, 0x3f1b_4598),
        ] {
            assert_eq!(exp(d).to_bits(), sleef, "exp({d})");
            assert_eq!(((d as f64).exp() as f32).to_bits(), nearest);
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-105.0), 0.0);
        assert_eq!(exp(-f32::MAX), 0.0);
        assert_eq!(exp(101.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reduce_all_sums_in_8_lanes_then_halves() {
        // Elements 0 and 8 share lane 0 (1 + TINY = 1); 1 and 9 share lane 1 (2·TINY).
        let mut x = vec![0f32; 16];
        x[0] = 1.0;
        x[8] = TINY;
        assert_eq!(reduce_all_sum(&x, 16), 1.0);
        x[1] = TINY;
        x[9] = TINY;
        assert_eq!(reduce_all_sum(&x, 16), 1.0 + 2.0 * TINY);
        // Shorter than a vector: in order (1 + TINY = 1, + TINY = 1).
        assert_eq!(reduce_all_sum(&[1.0, TINY, TINY], 3), 1.0);
        // Only the first elements given: the rest of the row counts as zeros.
        assert_eq!(reduce_all_sum(&x[..10], 64), 1.0 + 2.0 * TINY);
    }

    #[test]
    fn sum_matches_torch_on_values_spanning_many_binades() {
        // Where the order shows in the last bit. Row: x[i] = 2^(i % 24 - 12) · (1 + i/128).
        for (len, torch_bits) in [(128usize, TORCH_SUM_128), (576, TORCH_SUM_576)] {
            let x: Vec<f32> = (0..len)
                .map(|i| 2f32.powi((i % 24) as i32 - 12) * (1.0 + i as f32 / 128.0))
                .collect();
            assert_eq!(sum(&x).to_bits(), torch_bits, "len {len}");
        }
    }

    #[test]
    fn avx512_sums_use_16_lanes() {
        // sum over 128: with 8 lanes, elements 0, 32 and 96 all fall in vector sum 0's lane
        // 0, where each TINY is lost against the 1; with 16 lanes 32 and 96 share sum 2's
        // lane 0 (2·TINY), which survives being added to the 1.
        let mut x = vec![0f32; 128];
        x[0] = 1.0;
        x[32] = TINY;
        x[96] = TINY;
        assert_eq!(TorchCpu::Avx2.sum(&x), 1.0);
        assert_eq!(TorchCpu::Avx512Bf16.sum(&x), 1.0 + 2.0 * TINY);
        // reduce_all over 32: elements 8 and 24 share lane 8 of 16 (2·TINY, added to lane 0
        // by the halving); in 8 lanes each meets the 1 alone.
        let mut x = vec![0f32; 32];
        x[0] = 1.0;
        x[8] = TINY;
        x[24] = TINY;
        assert_eq!(TorchCpu::Avx2.reduce_all_sum(&x, 32), 1.0);
        assert_eq!(
            TorchCpu::Avx512Bf16.reduce_all_sum(&x, 32),
            1.0 + 2.0 * TINY
        );
    }
}
