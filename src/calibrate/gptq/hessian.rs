//! The Hessian of a Linear's inputs, accumulated as llm-compressor 0.14's
//! `accumulate_hessian` does (`modifiers/gptq/helpers.py`).

use super::xtx;
use crate::{Error, Result};
use faer::Par;

/// `math.sqrt(2)` as torch applies it to an f32 tensor: rounded to f32 first.
const SQRT2: f32 = std::f32::consts::SQRT_2;

/// `H = Σ_samples 2·XᵀX` over the calibration samples a Linear saw, in f32, and the number
/// of samples. llm-compressor's hook widens the Linear's (BF16) input to f32, multiplies it
/// by `√2` (so each product is `(√2x)(√2x)`, not `2xy`), adds `XᵀX` of that to the running
/// sum, and counts the batch dimension (one calibration sample = one batch here); GPTQ then
/// uses `H / nsamples` ([`Hessian::normalized`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    cols: usize,
    /// `cols × cols`, row-major; only the lower triangle (`j <= i`) is kept up to date (the
    /// matrix is symmetric): read it through [`Hessian::sum_at`].
    sum: Vec<f32>,
    nsamples: usize,
}

impl Hessian {
    /// An empty Hessian for a Linear with `cols` input features.
    pub fn new(cols: usize) -> Self {
        Hessian {
            cols,
            sum: vec![0.0; cols * cols],
            nsamples: 0,
        }
    }

    /// Input features (the side of the matrix).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Calibration samples added so far.
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }

    /// Adds one calibration sample: `x` is `tokens × cols`, row-major, the Linear's input
    /// (BF16 values widened to f32). NaN in `x` is an error.
    pub fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        if x.len() != tokens * self.cols {
            return Err(Error::Calibration(format!(
                "GPTQ: {} activations do not make {tokens} tokens of {} features",
                x.len(),
                self.cols
            )));
        }
        // NaN is an error; Inf (and finite values whose squares overflow) make an infinite
        // Hessian, on which llm-compressor falls back to round-to-nearest: so does qforge.
        if let Some(i) = x.iter().position(|v| v.is_nan()) {
            return Err(Error::Calibration(format!(
                "GPTQ: the activations hold NaN (token {}, feature {})",
                i / self.cols,
                i % self.cols
            )));
        }
        // `hessian += inp.matmul(inp.t())`: the product first, in MKL's order (`xtx`), then
        // one rounding per sum (accumulating into the sum inside the product would fuse it
        // and round differently). XᵀX is symmetric: only the lower half is kept.
        if self.cols > 0 {
            let work = tokens * self.cols * self.cols;
            xtx::add_lower_product(x, SQRT2, tokens, self.cols, &mut self.sum, work >= 1 << 16);
        }
        self.nsamples += 1;
        Ok(())
    }

    /// Adds the samples of `other` (a Hessian of the same Linear filled elsewhere).
    pub fn merge(&mut self, other: &Hessian) -> Result<()> {
        if other.cols != self.cols {
            return Err(Error::Calibration(format!(
                "GPTQ: cannot merge a Hessian of {} features into one of {}",
                other.cols, self.cols
            )));
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        self.nsamples += other.nsamples;
        Ok(())
    }

    /// Element `(i, j)` of the accumulated `Σ 2·XᵀX`.
    #[inline]
    pub fn sum_at(&self, i: usize, j: usize) -> f32 {
        self.sum[i.max(j) * self.cols + i.min(j)]
    }

    /// The accumulated `Σ 2·XᵀX`, row-major `cols × cols` (a copy).
    pub fn sum(&self) -> Vec<f32> {
        let n = self.cols;
        (0..n * n).map(|k| self.sum_at(k / n, k % n)).collect()
    }

    /// `H / nsamples` in f32, the matrix GPTQ factors (`prepare_batch`).
    pub fn normalized(&self) -> Vec<f32> {
        let n = self.nsamples as f32;
        self.sum().iter().map(|&v| v / n).collect()
    }

    /// The diagonal of [`Hessian::normalized`] (the same values, without the matrix).
    pub fn normalized_diagonal(&self) -> Vec<f32> {
        let n = self.nsamples as f32;
        (0..self.cols)
            .map(|j| self.sum[j * self.cols + j] / n)
            .collect()
    }
}

/// Threads for a product of about `work` multiply-adds: one below a size where splitting
/// costs more than it saves.
pub(super) fn par(work: usize) -> Par {
    if work < (1 << 16) {
        Par::Seq
    } else {
        Par::rayon(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_is_two_xtx() {
        // x = [[1, 2], [3, 4]]: XᵀX = [[10, 14], [14, 20]] (the √2 products round in f32).
        let mut h = Hessian::new(2);
        h.add_batch(&[1.0, 2.0, 3.0, 4.0], 2).unwrap();
        for (got, exact) in h.sum().iter().zip([20.0, 28.0, 28.0, 40.0]) {
            assert!((got - exact).abs() < 1e-5, "{got} vs {exact}");
        }
        assert_eq!(h.nsamples(), 1);
    }

    #[test]
    fn normalized_divides_by_samples_not_tokens() {
        let mut h = Hessian::new(1);
        h.add_batch(&[1.0, 1.0, 1.0], 3).unwrap(); // 3 tokens: 2·3 = 6
        h.add_batch(&[2.0], 1).unwrap(); // 2·4 = 8
        assert_eq!(h.nsamples(), 2);
        let n = h.normalized()[0];
        assert!((n - 7.0).abs() < 1e-5, "{n}");
    }

    #[test]
    fn merge_adds_samples() {
        let (mut a, mut b, mut c) = (Hessian::new(2), Hessian::new(2), Hessian::new(2));
        a.add_batch(&[1.0, -1.0], 1).unwrap();
        b.add_batch(&[0.5, 2.0], 1).unwrap();
        c.add_batch(&[1.0, -1.0], 1).unwrap();
        c.add_batch(&[0.5, 2.0], 1).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a, c);
        assert!(a.merge(&Hessian::new(3)).is_err());
    }

    #[test]
    fn nan_activations_and_bad_shapes_are_errors() {
        let mut h = Hessian::new(2);
        let e = h.add_batch(&[1.0, f32::NAN], 1).unwrap_err().to_string();
        assert!(h.add_batch(&[1.0, f32::INFINITY], 1).is_ok());
        let mut h = Hessian::new(2);
        assert!(e.contains("NaN") && e.contains("feature 1"), "{e}");
        assert!(h.add_batch(&[1.0, 2.0, 3.0], 2).is_err());
        assert_eq!(h.nsamples(), 0);
    }
}
