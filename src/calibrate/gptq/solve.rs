//! The linear algebra and the column loop of llm-compressor 0.14's `quantize_weight`
//! (`modifiers/gptq/gptq_quantize.py`, `helpers.py`): activation ordering, dead columns,
//! dampening, `Hinv = chol(H⁻¹)ᵀ` with faer, and the blocked error propagation.

use super::hessian::{par, Hessian};
use super::qparams::Grid;
use crate::calibrate::torch_dot::TorchCpu;
use crate::{Error, Result};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Side};
use rayon::prelude::*;

/// `argsort(diag(H), descending=True)` of the diagonal `diag`: columns by decreasing
/// activation energy (ties in their original order).
pub(super) fn actorder_perm(diag: &[f32], n: usize) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    perm
}

/// `(H / nsamples)[perm][:, perm]` as faer's matrix, made straight from the Hessian's sum
/// (no normalised or permuted copy in between).
pub(super) fn normalized_matrix(h: &Hessian, perm: &[usize]) -> Mat<f32> {
    let count = h.nsamples() as f32;
    Mat::from_fn(h.cols(), h.cols(), |i, j| {
        h.sum_at(perm[i], perm[j]) / count
    })
}

/// The columns of row-major `w` (`cols` wide) in the order `perm`.
pub(super) fn permute_cols(w: &[f32], cols: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for row in w.chunks(cols) {
        out.extend(perm.iter().map(|&j| row[j]));
    }
    out
}

/// Undoes [`permute_cols`].
pub(super) fn unpermute_cols(w: &[f32], cols: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for (src, dst) in w.chunks(cols).zip(out.chunks_mut(cols)) {
        for (j, &p) in perm.iter().enumerate() {
            dst[p] = src[j];
        }
    }
    out
}

/// `factorize_hessian` for one matrix (consumed: each working matrix is dropped as soon as
/// the next one is made, so at most three `n × n` are alive): zeroes the weight columns whose diagonal entry is 0
/// (dead inputs; their diagonal becomes 1), adds `dampening_frac · mean(diag)` to the
/// diagonal, and returns the upper Cholesky factor of `H⁻¹` (row-major `n × n`, zero below
/// the diagonal) and whether the Hessian was not positive definite (or held Inf/NaN). In
/// that case llm-compressor uses the identity, which makes GPTQ round-to-nearest, and warns.
pub(super) fn factorize(
    mut h: Mat<f32>,
    n: usize,
    w: &mut [f32],
    dampening_frac: f64,
    cpu: TorchCpu,
) -> Result<(Vec<f32>, bool)> {
    for j in 0..n {
        if h[(j, j)] == 0.0 {
            h[(j, j)] = 1.0;
            w.iter_mut().skip(j).step_by(n).for_each(|x| *x = 0.0);
        }
    }
    let diag: Vec<f32> = (0..n).map(|j| h[(j, j)]).collect();
    let damp = damping(&diag, dampening_frac, cpu);
    for j in 0..n {
        h[(j, j)] += damp;
    }
    // Activations beyond ~1e19 overflow `xᵀx` in f32 (it happens in the fixture's layer 1
    // down_proj): torch's `cholesky_ex` then fails and llm-compressor falls back to RTN.
    let finite = (0..n).all(|j| (0..n).all(|i| h[(i, j)].is_finite()));
    if !finite {
        return Ok((identity(n), true));
    }
    let upper = if n <= F64_SOLVE_MAX_COLS && cpu == TorchCpu::Avx2 {
        let h64 = Mat::<f64>::from_fn(n, n, |i, j| h[(i, j)] as f64);
        drop(h);
        upper_factor_of_inverse(h64, |v| v as f32)
    } else {
        upper_factor_of_inverse(h, |v| v)
    };
    match upper {
        Some(upper) => Ok((upper?, false)),
        None => Ok((identity(n), true)),
    }
}

/// Hessians up to this many columns are factored in f64 and rounded to f32 once, when the
/// reference is an AVX2 CPU: its MKL's f32 Cholesky and inverse (llm-compressor's) land
/// closer to the exact result than faer's f32 ones, and f64 falls on MKL's side of the
/// near-ties that decide a code (against llm-compressor run on an AVX2 CPU, the g128
/// SmoothQuant+GPTQ and W4G64 actorder cases go from 2,168 and 12 differing codes to 0).
/// MKL on an AVX-512 CPU falls on faer's f32 side instead: against the shared fixtures
/// (made there) SmoothQuant+GPTQ, W4A16 and W8A8 leave 138, 31 and 9 codes different in
/// f32, 2,604, 33 and 10 in f64.
/// Wider ones (the down_proj of a Llama-3.2-1B, 8,192; every down_proj from 8B up) stay in
/// f32: the f64 solve takes twice the memory (6 × cols² f32's worth: 1.61 GB at 8,192
/// columns, which alone would put a 1B GPTQ run past 2 GB; 19.7 GB at a 70B's 28,672).
pub(crate) const F64_SOLVE_MAX_COLS: usize = 4_096;

/// `cholesky(cholesky_inverse(cholesky(h)), upper=True)` as a row-major f32 matrix, `None`
/// when `h` is not positive definite.
fn upper_factor_of_inverse<T: faer::traits::RealField>(
    h: Mat<T>,
    to_f32: impl Fn(T) -> f32,
) -> Option<Result<Vec<f32>>> {
    let n = h.nrows();
    let llt = h.llt(Side::Lower).ok()?;
    drop(h);
    let hinv = llt.inverse();
    drop(llt);
    let Ok(upper) = hinv.llt(Side::Lower) else {
        return Some(Err(Error::Calibration(
            "GPTQ: the inverse Hessian is not positive definite (torch.linalg.cholesky fails \
             here in llm-compressor too); raise dampening_frac"
                .to_string(),
        )));
    };
    drop(hinv);
    let l = upper.L();
    let mut out = Vec::with_capacity(n * n);
    for i in 0..n {
        out.extend((0..n).map(|j| to_f32(l[(j, i)].clone())));
    }
    Some(Ok(out))
}

fn identity(n: usize) -> Vec<f32> {
    row_major(Mat::<f32>::identity(n, n).as_ref())
}

/// `percdamp * torch.mean(torch.diag(H))` of the (permuted) diagonal `diag`: torch's f32
/// sum in `cpu`'s order ([`TorchCpu::sum`]) divided by n, times `percdamp` rounded to f32.
/// An exact (f64) sum moves the damping by an ulp on SmolLM2, and with it every entry of
/// `Hinv`.
pub(super) fn damping(diag: &[f32], dampening_frac: f64, cpu: TorchCpu) -> f32 {
    dampening_frac as f32 * (cpu.sum(diag) / diag.len() as f32)
}

fn row_major(m: MatRef<'_, f32>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        out.extend((0..m.ncols()).map(|j| m[(i, j)]));
    }
    out
}

/// The GPTQ column loop over `w` (row-major `rows × cols`, in the working column order),
/// with `hinv` from [`factorize`]: each column is fake-quantized with the scale of its
/// original column `orig[j]` (llm-compressor's `g_idx` follows the permutation), its error divided by
/// `Hinv[j, j]` is subtracted from the block's later columns, and each block's errors from
/// all later columns (`W[:, i2:] -= Err · Hinv[i1:i2, i2:]`). On return `w` holds the
/// fake-quantized weight; the result is the loss `Σ err² / 2`.
pub(super) fn block_loop(
    w: &mut [f32],
    cols: usize,
    hinv: &[f32],
    grid: &Grid,
    orig: &[usize],
    block_size: usize,
) -> f64 {
    let rows = grid.rows();
    let mut loss = 0.0f64;
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block_size).min(cols);
        let bw = i2 - i1;
        let mut err = vec![0.0f32; rows * bw];
        loss += w
            .par_chunks_mut(cols)
            .zip(err.par_chunks_mut(bw))
            .enumerate()
            .map(|(r, (row, e))| {
                quantize_block_row(r, &mut row[i1..i2], e, hinv, cols, i1, grid, orig)
            })
            .sum::<f64>();
        if i2 < cols {
            propagate(w, cols, &err, hinv, i1, i2);
        }
        i1 = i2;
    }
    loss
}

/// `w_err = Err1 @ Hinv[i1:i2, i2:]; W[:, i2:] -= w_err`: the product with faer, then the
/// subtraction (as torch rounds it: not fused into the GEMM).
fn propagate(w: &mut [f32], cols: usize, err: &[f32], hinv: &[f32], i1: usize, i2: usize) {
    let (bw, rest) = (i2 - i1, cols - i2);
    let rows = err.len() / bw;
    let e = MatRef::from_row_major_slice(err, rows, bw);
    let h = MatRef::from_row_major_slice(hinv, cols, cols).submatrix(i1, i2, bw, rest);
    let mut w_err = vec![0.0f32; rows * rest];
    let dst = MatMut::from_row_major_slice_mut(&mut w_err, rows, rest);
    matmul(dst, Accum::Replace, e, h, 1.0, par(rows * bw * rest));
    w.par_chunks_mut(cols)
        .zip(w_err.par_chunks(rest))
        .for_each(|(row, d)| {
            for (x, d) in row[i2..].iter_mut().zip(d) {
                *x -= d;
            }
        });
}

/// `gptq_block_update` for one row: `w1` is the row's block (columns `i1..`), replaced by
/// its fake-quantized values; `e` receives the scaled errors. Returns `Σ err² / 2`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn quantize_block_row(
    r: usize,
    w1: &mut [f32],
    e: &mut [f32],
    hinv: &[f32],
    cols: usize,
    i1: usize,
    grid: &Grid,
    orig: &[usize],
) -> f64 {
    let mut loss = 0.0f32;
    for i in 0..w1.len() {
        let col = i1 + i;
        let w = w1[i];
        let q = grid.fake_quantize(w, grid.index(r, orig[col]));
        let error = (w - q) / hinv[col * cols + col];
        e[i] = error;
        loss += error * error;
        let h = &hinv[col * cols + col..col * cols + i1 + w1.len()];
        for (x, &hv) in w1[i..].iter_mut().zip(h) {
            *x -= error * hv;
        }
        w1[i] = q;
    }
    loss as f64 / 2.0
}
