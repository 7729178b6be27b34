//! Launches of the GEMV kernels (`kernels/gemv.cu`: decode's skinny GEMMs, up to 16
//! activation rows per launch, for every weight kind, and the grouped dequantization) and of
//! the code-weight GEMMs (`kernels/gemm.cu`: prefill without cuBLASLt).

use super::i32_of;
use crate::runtime::cuda::gpu::{cfg, Arg, Gpu};
use crate::runtime::cuda::grouped::GroupKind;
use crate::{Error, Result};

/// The most activation rows one GEMV launch takes.
pub const GEMV_MAX_ROWS: usize = 16;

/// The 1-byte-code weights of the W8A8 GEMV (decode) and GEMM (prefill) kernels, with
/// per-token activation codes `x` and scales `sa`:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// `y[m, n] = bf16(sa[m] · (sw[n] · x[m]·w[n]) (+ bias))`, f32 sums.
    Fp8,
    /// The same with int8 codes, the sums exact in s32 (vLLM's `cutlass_scaled_mm`).
    Int8,
    /// FP8_BLOCK: `y[m, n] = bf16(Σ_g f32(x[m]·w[n] over group g) · sa[m, g] · sw[n, g]
    /// (+ bias))`, 128-column groups, k a multiple of 128, scales `sw [n, k/128]`,
    /// `sa [m, k/128]`.
    Fp8Block,
}

impl Codes {
    /// The (GEMV, GEMM) kernels.
    fn kernels(self) -> (&'static str, &'static str) {
        match self {
            Codes::Fp8 => ("gemv_fp8", "gemm_fp8"),
            Codes::Int8 => ("gemv_int8", "gemm_int8"),
            Codes::Fp8Block => ("gemv_fp8_block", "gemm_fp8_block"),
        }
    }

    /// Bytes of activation scales per row.
    fn scale_row(self, k: usize) -> usize {
        match self {
            Codes::Fp8Block => k / 128 * 4,
            _ => 4,
        }
    }
}

/// The GEMV of `kind` (weights `(codes, sw, bias)`, activations `(codes, sa)`) for any `m`, in
/// launches of 16 rows (meant for m ≤ 16).
pub fn gemv_codes(
    g: &Gpu,
    kind: Codes,
    (w, sw, bias): (u64, u64, u64),
    (x, sa): (u64, u64),
    y: u64,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    for m0 in (0..m).step_by(GEMV_MAX_ROWS) {
        let rows = GEMV_MAX_ROWS.min(m - m0);
        let xs = (x + (m0 * k) as u64, sa + (m0 * kind.scale_row(k)) as u64);
        let args = code_args((w, sw, bias), xs, y + (m0 * n * 2) as u64, (rows, n, k))?;
        let name = kind.kernels().0;
        let grid = cfg((n.div_ceil(16) as u32, 1), g.gemv_threads(name), 0);
        g.launch(name, grid, &args)?;
    }
    Ok(())
}

/// The tensor-core GEMM of `kind` for prefill (64 × 64 output tiles): the GEMV's formula
/// (for INT8 its exact result; FP8 sums in another order).
pub fn gemm_codes(
    g: &Gpu,
    kind: Codes,
    w: (u64, u64, u64),
    x: (u64, u64),
    y: u64,
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let args = code_args(w, x, y, (m, n, k))?;
    let grid = (n.div_ceil(64) as u32, m.div_ceil(64) as u32);
    g.launch(kind.kernels().1, cfg(grid, 128, 0), &args)
}

/// The arguments of the code GEMV and GEMM kernels, in their order.
fn code_args(
    (w, sw, bias): (u64, u64, u64),
    (x, sa): (u64, u64),
    y: u64,
    (m, n, k): (usize, usize, usize),
) -> Result<[Arg; 9]> {
    Ok([
        Arg::U64(w),
        Arg::U64(sw),
        Arg::U64(x),
        Arg::U64(sa),
        Arg::U64(bias),
        Arg::U64(y),
        Arg::I32(i32_of("rows", m)?),
        Arg::I32(i32_of("rows", n)?),
        Arg::I32(i32_of("width", k)?),
    ])
}

/// Dense BF16 GEMV `y[m, n] = x[m]·w[n] (+ bias)`, f32 or bf16 out, any `m`.
pub fn gemv_bf16(
    g: &Gpu,
    (w, bias): (u64, u64),
    x: u64,
    (y, f32_out): (u64, bool),
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let out_size = if f32_out { 4 } else { 2 };
    for m0 in (0..m).step_by(GEMV_MAX_ROWS) {
        let mm = GEMV_MAX_ROWS.min(m - m0);
        let args = [
            Arg::U64(w),
            Arg::U64(x + (m0 * k * 2) as u64),
            Arg::U64(bias),
            Arg::U64(y + (m0 * n * out_size) as u64),
            Arg::I32(f32_out as i32),
            Arg::I32(mm as i32),
            Arg::I32(i32_of("rows", n)?),
            Arg::I32(i32_of("width", k)?),
        ];
        let threads = g.gemv_threads("gemv_bf16");
        g.launch(
            "gemv_bf16",
            cfg((n.div_ceil(16) as u32, 1), threads, 0),
            &args,
        )?;
    }
    Ok(())
}

/// A packed grouped weight as the `*g` kernels take it (see [`super::grouped`]): device
/// addresses of the codes, scales and offsets (0: symmetric), FP4's scale tables and row
/// table offsets (0, 0 for the integer formats), the format and group size.
#[derive(Debug, Clone, Copy)]
pub struct GroupedW {
    pub codes: u64,
    pub scales: u64,
    pub offsets: u64,
    pub tables: (u64, u64),
    pub kind: GroupKind,
    pub group: usize,
}

impl GroupedW {
    /// A `*g` kernel's arguments: the weight's five addresses, `mid`, then rows, width and
    /// group size.
    fn args(&self, mid: &[Arg], (n, k): (usize, usize)) -> Result<Vec<Arg>> {
        let (t, r) = self.tables;
        let mut args = [self.codes, self.scales, self.offsets, t, r]
            .map(Arg::U64)
            .to_vec();
        args.extend_from_slice(mid);
        args.extend([
            Arg::I32(i32_of("rows", n)?),
            Arg::I32(i32_of("width", k)?),
            Arg::I32(i32_of("group", self.group)?),
        ]);
        Ok(args)
    }
}

/// Weight-only grouped GEMV `y[m, n] = x[m]·W[n] (+ bias)` with W dequantized to BF16 in
/// registers (equal to [`gemv_bf16`] on the dequantized W); f32 or bf16 out, any `m`.
pub fn gemv_grouped(
    g: &Gpu,
    (w, bias): (GroupedW, u64),
    x: u64,
    (y, f32_out): (u64, bool),
    (m, n, k): (usize, usize, usize),
) -> Result<()> {
    let out_size = if f32_out { 4 } else { 2 };
    for m0 in (0..m).step_by(GEMV_MAX_ROWS) {
        let mm = GEMV_MAX_ROWS.min(m - m0);
        let mid = [
            Arg::U64(bias),
            Arg::U64(x + (m0 * k * 2) as u64),
            Arg::U64(y + (m0 * n * out_size) as u64),
            Arg::I32(f32_out as i32),
            Arg::I32(mm as i32),
        ];
        let args = w.args(&mid, (n, k))?;
        let kernel = w.kind.kernels().0;
        g.launch(kernel, cfg((n.div_ceil(16) as u32, 1), 128, 0), &args)?;
    }
    Ok(())
}

/// The BF16 values `[n, k]` of a grouped weight into `out` (for the dense prefill GEMM).
pub fn dequant_grouped(g: &Gpu, w: GroupedW, out: u64, (n, k): (usize, usize)) -> Result<()> {
    let args = w.args(&[Arg::U64(out)], (n, k))?;
    let blocks = (n * crate::runtime::cuda::grouped::padded(k) / 8).div_ceil(256);
    let grid = u32::try_from(blocks)
        .map_err(|_| Error::Runtime(format!("dequantizing a {n}x{k} weight: too large")))?;
    g.launch(w.kind.kernels().1, cfg((grid, 1), 256, 0), &args)
}
