//! The calibration activations: one `[tokens, hidden]` buffer per sample, stored as BF16
//! bits (every layer output is rounded to BF16 by the forward pass, and the embeddings are
//! BF16 rows, so 2 bytes a value lose nothing), either in RAM or, when the memory plan says
//! they do not fit the `--max-memory` budget, in a scratch file read and written one sample
//! at a time.
//!
//! The scratch file is unnamed (`O_TMPFILE`, or created and unlinked at once where that is
//! not available) in the output's temporary folder: nothing on disk ever looks like part of
//! a checkpoint, and its space is returned when the store is dropped, on success, on error
//! and even when the process is killed. It is read and written with `pread`/`pwrite`, not
//! mapped, so its pages live in the page cache (which the kernel reclaims) and never count
//! in the process's resident set: with a spilled store only one sample is resident.

use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where a store keeps its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Ram,
    /// A scratch file in this folder (the output's temporary folder).
    Spill(PathBuf),
}

/// The calibration activations of every sample, BF16 bits, in RAM or in a scratch file.
#[derive(Debug)]
pub struct Activations {
    /// Values of each sample (tokens × hidden).
    lens: Vec<usize>,
    /// Byte offset of each sample in the scratch file.
    offsets: Vec<u64>,
    storage: Storage,
}

#[derive(Debug)]
enum Storage {
    Ram(Vec<Vec<u16>>),
    File { file: File, dir: PathBuf },
}

impl Activations {
    /// An empty store for samples of `lens` values each (contents zero).
    pub fn new(lens: Vec<usize>, placement: &Placement) -> Result<Activations> {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut end = 0u64;
        for &n in &lens {
            offsets.push(end);
            end += 2 * n as u64;
        }
        let storage = match placement {
            Placement::Ram => Storage::Ram(lens.iter().map(|&n| vec![0; n]).collect()),
            Placement::Spill(dir) => {
                let file = tempfile::tempfile_in(dir).map_err(|e| scratch_error(dir, e))?;
                file.set_len(end).map_err(|e| scratch_error(dir, e))?;
                Storage::File {
                    file,
                    dir: dir.clone(),
                }
            }
        };
        Ok(Activations {
            lens,
            offsets,
            storage,
        })
    }

    /// An empty store of the same shape and placement (a new scratch file when spilled).
    pub fn empty_like(&self) -> Result<Activations> {
        Activations::new(self.lens.clone(), &self.placement())
    }

    /// A copy of every sample, with the same placement.
    pub fn try_clone(&self) -> Result<Activations> {
        let mut out = self.empty_like()?;
        let mut x = Vec::new();
        for i in 0..self.len() {
            self.read(i, &mut x)?;
            out.write(i, &x)?;
        }
        Ok(out)
    }

    pub fn placement(&self) -> Placement {
        match &self.storage {
            Storage::Ram(_) => Placement::Ram,
            Storage::File { dir, .. } => Placement::Spill(dir.clone()),
        }
    }

    /// Whether the samples are in a scratch file.
    pub fn spilled(&self) -> bool {
        matches!(self.storage, Storage::File { .. })
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Values in sample `i`.
    pub fn sample_len(&self, i: usize) -> usize {
        self.lens[i]
    }

    /// Reads sample `i` into `out` (resized), widened to f32.
    pub fn read(&self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        out.resize(self.lens[i], 0.0);
        match &self.storage {
            Storage::Ram(v) => widen(&v[i], out),
            Storage::File { file, dir } => {
                let mut bytes = vec![0u8; 2 * self.lens[i]];
                file.read_exact_at(&mut bytes, self.offsets[i])
                    .map_err(|e| scratch_error(dir, e))?;
                let bits: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                widen(&bits, out);
            }
        }
        Ok(())
    }

    /// Sample `i` widened to f32.
    pub fn sample(&self, i: usize) -> Result<Vec<f32>> {
        let mut x = Vec::new();
        self.read(i, &mut x)?;
        Ok(x)
    }

    /// Stores `x` as sample `i`. Its values are BF16 values (the forward pass rounds every
    /// output to BF16), so the conversion is exact; NaN and Inf are kept.
    pub fn write(&mut self, i: usize, x: &[f32]) -> Result<()> {
        assert_eq!(x.len(), self.lens[i], "sample {i} changed length");
        match &mut self.storage {
            Storage::Ram(v) => narrow(x, &mut v[i]),
            Storage::File { file, dir } => {
                let mut bits = vec![0u16; x.len()];
                narrow(x, &mut bits);
                let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
                file.write_all_at(&bytes, self.offsets[i])
                    .map_err(|e| scratch_error(dir, e))?;
            }
        }
        Ok(())
    }
}

fn widen(bits: &[u16], out: &mut [f32]) {
    for (o, &b) in out.iter_mut().zip(bits) {
        *o = f32::from_bits((b as u32) << 16);
    }
}

/// Rounds to nearest (exact for the BF16 values the forward pass makes; NaN stays NaN).
fn narrow(x: &[f32], bits: &mut [u16]) {
    for (b, &v) in bits.iter_mut().zip(x) {
        *b = half::bf16::from_f32(v).to_bits();
    }
}

fn scratch_error(dir: &Path, e: std::io::Error) -> Error {
    Error::Calibration(format!(
        "the activations' scratch file in {}: {e}",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BF16 values of every kind: normal, subnormal, ±0, ±Inf, NaN, extremes.
    fn bf16_values(n: usize, seed: u32) -> Vec<f32> {
        let mut special = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x0001 << 16), // the smallest subnormal
            f32::from_bits(0x7F7F << 16), // the largest finite
        ];
        let mut s = seed;
        while special.len() < n {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            special.push(f32::from_bits((s >> 16) << 16));
        }
        special.truncate(n);
        special
    }

    fn round_trip(placement: &Placement) {
        let lens = vec![24, 0, 40];
        let mut a = Activations::new(lens.clone(), placement).unwrap();
        let samples: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| bf16_values(n, i as u32))
            .collect();
        // Written out of order: samples are addressed, not appended.
        for i in [2, 0, 1] {
            a.write(i, &samples[i]).unwrap();
        }
        let b = a.try_clone().unwrap();
        for (i, s) in samples.iter().enumerate() {
            for store in [&a, &b] {
                let got = store.sample(i).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(s), "sample {i}");
            }
        }
        let mut nan = vec![1.0; 24];
        nan[3] = f32::NAN;
        a.write(0, &nan).unwrap();
        assert!(a.sample(0).unwrap()[3].is_nan());
    }

    #[test]
    fn bf16_values_round_trip_exactly_in_ram() {
        round_trip(&Placement::Ram);
    }

    #[test]
    fn bf16_values_round_trip_exactly_through_the_scratch_file() {
        let dir = tempfile::tempdir().unwrap();
        round_trip(&Placement::Spill(dir.path().to_path_buf()));
        // The scratch file has no name: nothing is left in (or was ever visible in) the
        // folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_spilled_store_has_no_name_in_its_folder_while_alive() {
        let dir = tempfile::tempdir().unwrap();
        let a = Activations::new(vec![1 << 16], &Placement::Spill(dir.path().into())).unwrap();
        assert!(a.spilled());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_scratch_folder_is_a_clear_error() {
        let e = Activations::new(vec![4], &Placement::Spill("/nonexistent/dir".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scratch file in /nonexistent/dir"), "{e}");
    }
}
