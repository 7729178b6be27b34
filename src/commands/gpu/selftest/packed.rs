//! The packed weight-only presets (W4A16, W4A16_ASYM, W8A16, NVFP4A16, MXFP4A16) against the
//! CPU loader, on llm-compressor's scheme fixtures: the dequantization kernel must give the
//! CPU's BF16 values, and the packed GEMV `gemv_bf16`'s outputs on them, bit for bit. On a
//! GPU, also the decode GEMVs' speed on a 70B-shaped gate_up (packed INT4, BF16, FP8_BLOCK,
//! FP8 per channel).

use super::super::report::Report;
use crate::checkpoint::Checkpoint;
use crate::runtime::config::ModelConfig;
use crate::runtime::cuda::device_weights::{DLinear, DWeights};
use crate::runtime::cuda::gpu::Gpu;
use crate::runtime::cuda::grouped::GroupKind;
use crate::runtime::cuda::ops::{self, Codes};
use crate::runtime::cuda::upload::f32_bytes;
use crate::runtime::weights::{Dense, Linear, LinearWeight, Weights};
use crate::{Error, Result};
use std::path::Path;
use std::time::Instant;

/// The scheme fixtures (`fixtures/schemes/<name>`) that run packed.
pub const SCHEMES: &[&str] = &[
    "g128-W4A16",
    "g128-W4A16_ASYM",
    "g128-W8A16",
    "g128-NVFP4A16",
    "g128-MXFP4A16",
    "unaligned-NVFP4A16",
    "unaligned-MXFP4A16",
];

fn download(g: &Gpu, ptr: u64, bytes: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; bytes];
    g.download(ptr, &mut b)?;
    Ok(b)
}

/// The CPU loader's BF16 values of fused parts, as bytes.
fn host_bf16(parts: &[&Linear]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for p in parts {
        let LinearWeight::Dense(Dense::Bf16(v)) = &p.weight else {
            return Err(Error::Runtime(format!(
                "{}: the CPU loader kept it packed",
                p.name
            )));
        };
        out.extend(v.iter().flat_map(|b| b.to_le_bytes()));
    }
    Ok(out)
}

/// (values unlike the CPU's, GEMV outputs unlike gemv_bf16's) of one packed Linear, summed
/// over the kernels that can run it (a BF16-scaled INT4 weight also through the general
/// INT4 kernels, which must give the same values).
fn check_linear(g: &Gpu, d: &DLinear, parts: &[&Linear]) -> Result<(usize, usize)> {
    let w = d
        .grouped()
        .ok_or_else(|| Error::Runtime(format!("{} is not packed", d.name)))?;
    let mut kinds = vec![w.kind];
    if w.kind == GroupKind::Int4Bf16 {
        kinds.push(GroupKind::Int4);
    }
    let (mut values, mut outputs) = (0, 0);
    for kind in kinds {
        let (v, o) = check_kernels(g, ops::GroupedW { kind, ..w }, (d.n, d.k), parts)?;
        values += v;
        outputs += o;
    }
    Ok((values, outputs))
}

/// One kernel pair on a packed weight: the dequantized values against the CPU's, then the
/// GEMV for 1, 5, 16 and 20 activation rows, plain, with a bias, and with f32 output.
fn check_kernels(
    g: &Gpu,
    w: ops::GroupedW,
    (n, k): (usize, usize),
    parts: &[&Linear],
) -> Result<(usize, usize)> {
    let dense = g.alloc(n * k * 2)?;
    ops::dequant_grouped(g, w, dense.ptr, (n, k))?;
    let got = download(g, dense.ptr, n * k * 2)?;
    let want = host_bf16(parts)?;
    let values = got
        .chunks(2)
        .zip(want.chunks(2))
        .filter(|(a, b)| a != b)
        .count();
    let bias: Vec<f32> = (0..n).map(|r| r as f32 * 0.125 - 2.0).collect();
    let bias = g.upload_new(&f32_bytes(&bias))?;
    let mut outputs = 0;
    for m in [1, 5, 16, 20] {
        let x: Vec<u8> = (0..m * k)
            .flat_map(|i| {
                let v = ((i * 7919 % 2001) as f32 - 1000.0) / 256.0;
                half::bf16::from_f32(v).to_le_bytes()
            })
            .collect();
        let x = g.upload_new(&x)?;
        // Plain, with a bias, and f32 out (an lm_head).
        for (b, f32_out) in [(0, false), (bias.ptr, false), (0, true)] {
            let bytes = m * n * if f32_out { 4 } else { 2 };
            let (y1, y2) = (g.alloc(bytes)?, g.alloc(bytes)?);
            ops::gemv_grouped(g, (w, b), x.ptr, (y1.ptr, f32_out), (m, n, k))?;
            ops::gemv_bf16(g, (dense.ptr, b), x.ptr, (y2.ptr, f32_out), (m, n, k))?;
            let (p, q) = (download(g, y1.ptr, bytes)?, download(g, y2.ptr, bytes)?);
            let unit = if f32_out { 4 } else { 2 };
            outputs += p
                .chunks(unit)
                .zip(q.chunks(unit))
                .filter(|(a, b)| a != b)
                .count();
        }
    }
    Ok((values, outputs))
}

/// One scheme fixture, every Linear of every layer: two rows in `r`, each a count that must
/// be 0.
pub fn fixture(g: &Gpu, dir: &Path, name: &str, r: &mut Report) -> Result<()> {
    let ck = Checkpoint::open(dir)?;
    let cfg = ModelConfig::from_json(&ck.config)?;
    let host = Weights::load(&ck, &cfg)?;
    let dw = DWeights::from_checkpoint(g, &ck, &cfg, &mut |_, _| {})?;
    let (mut values, mut outputs) = (0, 0);
    for (h, d) in host.layers.iter().zip(&dw.layers) {
        let fused: [(&DLinear, Vec<&Linear>); 4] = [
            (&d.qkv, vec![&h.q_proj, &h.k_proj, &h.v_proj]),
            (&d.o, vec![&h.o_proj]),
            (&d.gate_up, vec![&h.gate_proj, &h.up_proj]),
            (&d.down, vec![&h.down_proj]),
        ];
        for (lin, parts) in fused {
            let (v, o) = check_linear(g, lin, &parts)?;
            values += v;
            outputs += o;
        }
    }
    r.at_most(
        name,
        "dequantized values unlike the cpu's",
        values as f64,
        0.0,
    );
    r.at_most(name, "gemv outputs unlike gemv_bf16's", outputs as f64, 0.0);
    Ok(())
}

type Launch<'a> = dyn Fn() -> Result<()> + 'a;

/// Decode GEMV times on a 70B gate_up (57344 × 8192), one activation row, with the bytes
/// each reads per second (real GPUs only): INT4 g128 packed (both kernels) vs BF16, and
/// FP8_BLOCK vs FP8 per channel.
pub fn speed(g: &Gpu, r: &mut Report) -> Result<()> {
    if g.is_emulated() {
        return Ok(());
    }
    let (n, k) = (57_344, 8_192);
    let groups = k / 128;
    let codes = g.alloc(n * k)?;
    ops::fill_fp8_normal(g, codes.ptr, n * k, 1)?; // also two valid INT4 codes per byte
    let scales = g.alloc(n * groups * 4)?;
    ops::fill_f32(g, scales.ptr, n * groups, 1.0 / 512.0)?; // a BF16 value: both INT4 paths
    let dense = g.alloc(n * k * 2)?;
    ops::fill_bf16_normal(g, dense.ptr, n * k, 2, 0.0, 0.02)?;
    let x = g.alloc(k * 2)?;
    ops::fill_bf16_normal(g, x.ptr, k, 3, 0.0, 1.0)?;
    let (xq, xs) = (g.alloc(k)?, g.alloc(groups * 4)?);
    ops::quant_groups(g, x.ptr, 1, k, (xq.ptr, xs.ptr))?;
    let y = g.alloc(n * 2)?;
    let w = ops::GroupedW {
        codes: codes.ptr,
        scales: scales.ptr,
        offsets: 0,
        tables: (0, 0),
        kind: GroupKind::Int4,
        group: 128,
    };
    let wh = ops::GroupedW {
        kind: GroupKind::Int4Bf16,
        ..w
    };
    let time = |f: &Launch| -> Result<f64> {
        f()?;
        g.sync()?;
        let t0 = Instant::now();
        for _ in 0..20 {
            f()?;
        }
        g.sync()?;
        Ok(t0.elapsed().as_secs_f64() / 20.0)
    };
    let cw = (codes.ptr, scales.ptr, 0);
    let runs: [(&str, usize, &Launch); 5] = [
        ("int4 g128", n * k / 2 + n * groups * 4, &|| {
            ops::gemv_grouped(g, (w, 0), x.ptr, (y.ptr, false), (1, n, k))
        }),
        (
            "int4 g128, bf16 scales",
            n * k / 2 + n * groups * 4,
            &|| ops::gemv_grouped(g, (wh, 0), x.ptr, (y.ptr, false), (1, n, k)),
        ),
        ("bf16", n * k * 2, &|| {
            ops::gemv_bf16(g, (dense.ptr, 0), x.ptr, (y.ptr, false), (1, n, k))
        }),
        ("fp8 block", n * k + n * groups * 4, &|| {
            ops::gemv_codes(g, Codes::Fp8Block, cw, (xq.ptr, xs.ptr), y.ptr, (1, n, k))
        }),
        ("fp8 channel", n * k + n * 4, &|| {
            ops::gemv_codes(g, Codes::Fp8, cw, (xq.ptr, xs.ptr), y.ptr, (1, n, k))
        }),
    ];
    for (name, bytes, f) in runs {
        let t = time(f)?;
        r.info(
            "gemv-speed",
            &format!("70B gate_up, m 1, {name}"),
            format!("{:.1} us, {:.0} GB/s", t * 1e6, bytes as f64 / t / 1e9),
        );
    }
    Ok(())
}
