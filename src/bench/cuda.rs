//! The CUDA backend for `qforge bench`: a checkpoint streamed onto the GPU, or a random
//! model made directly in GPU memory (FP8_DYNAMIC: the same one `qforge gpu bench` times).

use crate::recipe::Scheme;
use crate::runtime::config::ModelConfig;
use crate::runtime::cuda::device_weights::DWeights;
use crate::runtime::cuda::gemm::GemmMode;
use crate::runtime::cuda::gpu::Gpu;
use crate::runtime::cuda::{load_cuda, CudaModel, CudaOptions};
use crate::Result;
use std::path::Path;
use std::time::Instant;

fn options(max_seq: usize) -> Result<CudaOptions> {
    Ok(CudaOptions {
        device: 0,
        max_seq: Some(max_seq),
        gemm: GemmMode::from_env()?,
        ..CudaOptions::default()
    })
}

/// Loads the checkpoint in `dir` onto GPU 0.
pub fn load(dir: &Path, max_seq: usize) -> Result<CudaModel> {
    load_cuda(dir, &options(max_seq)?)
}

/// A random model of `cfg`'s shape and `scheme` made in GPU 0's memory.
pub fn synthetic(
    cfg: &ModelConfig,
    scheme: Scheme,
    seed: u64,
    max_seq: usize,
) -> Result<CudaModel> {
    let gpu = Gpu::new(0)?;
    let w = DWeights::random(&gpu, cfg, scheme, seed as u32)?;
    CudaModel::new(gpu, cfg.clone(), w, &options(max_seq)?)
}

/// The GPU's name and its memory bandwidth in GB/s with where the figure comes from: the
/// datasheet table by name, else the driver's clock × bus width, else a measured copy.
pub fn bandwidth(model: &CudaModel) -> Result<(String, f64, String)> {
    let info = &model.gpu.info;
    if let Some(bw) = super::report::peak_bandwidth(&info.name) {
        return Ok((info.name.clone(), bw, "datasheet peak".into()));
    }
    if let Some(bw) = info.peak_bw_gbps {
        return Ok((info.name.clone(), bw, "peak from driver clock x bus".into()));
    }
    let g = &model.gpu;
    let how = format!("measured {} MiB copy", copy_bytes(g) >> 20);
    Ok((info.name.clone(), copy_bandwidth(g)?, how))
}

/// Bandwidth of a 4 GiB device-to-device copy (bytes read + written per second), GB/s.
pub fn copy_bandwidth(g: &Gpu) -> Result<f64> {
    let n = copy_bytes(g);
    let (a, b) = (g.alloc(n)?, g.alloc(n)?);
    g.copy(b.ptr, a.ptr, n)?;
    g.sync()?;
    let t0 = Instant::now();
    for _ in 0..5 {
        g.copy(b.ptr, a.ptr, n)?;
    }
    g.sync()?;
    Ok(2.0 * n as f64 * 5.0 / t0.elapsed().as_secs_f64() / 1e9)
}

/// The buffer size [`copy_bandwidth`] copies: 4 GiB defeats any GPU cache; the emulator's
/// host memory needs far less.
pub fn copy_bytes(g: &Gpu) -> usize {
    if g.is_emulated() {
        256 << 20
    } else {
        4 << 30
    }
}
