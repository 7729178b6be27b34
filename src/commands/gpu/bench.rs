//! `qforge gpu bench` and `qforge gpu gemm`: speed on random models created in GPU memory
//! (decode and prefill tokens/s, % of the HBM roofline) and the FP8 GEMM paths alone on
//! DeepSeek-R1-Distill-Llama-70B's Linear shapes (compared with `torch._scaled_mm` by
//! scripts/gpu_report.py).

use super::report::Report;
use crate::bench::cuda::copy_bandwidth;
use crate::recipe::Scheme;
use crate::runtime::cuda::cublaslt::Kind;
use crate::runtime::cuda::device_weights::DWeights;
use crate::runtime::cuda::gemm::{Gemm, GemmMode};
use crate::runtime::cuda::gpu::Gpu;
use crate::runtime::cuda::kernels::{pf_forms, GemvVariant, GEMV_DEFAULT, GEMV_SWEEP};
use crate::runtime::cuda::model::{CudaModel, CudaOptions};
use crate::runtime::cuda::ops::{self, Codes};
use crate::runtime::Backend;
use crate::{Error, Result};
use serde_json::json;
use std::time::Instant;

/// Decode and prefill speed of random FP8 models of the given shapes.
pub fn bench_models(
    device: usize,
    shapes: &[String],
    prompt: usize,
    decode: usize,
    prefill: usize,
    r: &mut Report,
) {
    Report::header("bench: random FP8 models in GPU memory");
    let bw = match Gpu::new(device).and_then(|g| Ok((g.info.peak_bw_gbps, copy_bandwidth(&g)?))) {
        Ok(v) => v,
        Err(e) => return r.error("bench", &e.to_string()),
    };
    let peak = bw.0.unwrap_or(bw.1);
    r.info(
        "bench",
        "HBM peak (driver clock x bus) GB/s",
        format!("{:?}", bw.0.map(|v| v.round())),
    );
    r.info("bench", "memory copy GB/s", format!("{:.0}", bw.1));
    for shape in shapes {
        if let Err(e) = bench_one(device, shape, (prompt, decode, prefill), (peak, bw.1), r) {
            r.error(&format!("bench {shape}"), &e.to_string());
        }
    }
}

fn bench_one(
    device: usize,
    shape: &str,
    (prompt, decode, prefill): (usize, usize, usize),
    (peak, copy): (f64, f64),
    r: &mut Report,
) -> Result<()> {
    let st = format!("bench {shape}");
    let cfg = crate::bench::synth::synthetic_config(shape)?;
    let g = Gpu::new(device)?;
    let t0 = Instant::now();
    let w = DWeights::random(&g, &cfg, Scheme::Fp8Dynamic, 7)?;
    let bytes = w.bytes_per_token();
    r.info(
        &st,
        "random weights in GPU memory",
        format!(
            "{:.1} GB in {:.1} s",
            bytes as f64 / 1e9,
            t0.elapsed().as_secs_f64()
        ),
    );
    let max_seq = (prompt + decode + 8).max(prefill);
    let opts = CudaOptions {
        device,
        max_seq: Some(max_seq),
        max_rows: Some(prefill),
        gemm: GemmMode::from_env()?,
        ..CudaOptions::default()
    };
    let mut m = CudaModel::new(g, cfg.clone(), w, &opts)?;
    let ids = |n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| i.wrapping_mul(2654435761) % cfg.vocab_size.min(128000) as u32)
            .collect()
    };
    // Prefill: a warm-up run makes the cuBLASLt plans, then the timed one.
    let p = ids(prefill);
    m.forward_sync(&p, 0)?;
    let t0 = Instant::now();
    m.forward_sync(&p, 0)?;
    let tp = t0.elapsed().as_secs_f64();
    let params = (bytes as f64 - 2.0 * (cfg.vocab_size * cfg.hidden_size) as f64).max(0.0);
    r.info(
        &st,
        &format!("prefill {prefill} tokens/s"),
        format!(
            "{:.0} ({:.0} ms, {:.0} TFLOP/s in the FP8 Linears; {})",
            prefill as f64 / tp,
            tp * 1e3,
            2.0 * params * prefill as f64 / tp / 1e12,
            m.gemm.fp8_path()
        ),
    );
    // A side measurement: its failure is reported and the decode rows still come.
    let dims = crate::runtime::cuda::gemm::attn_dims(&cfg)?;
    if let Err(e) = bench_attention(&m.gpu, dims, prefill, &st, r) {
        r.error(&format!("{st} attention"), &e.to_string());
    }
    // Decode: prompt, 4 warm-up steps (the first captures the graph), then `decode` timed
    // steps with device argmax; with CUDA graphs, then launch by launch.
    let time_decode = |m: &mut CudaModel| -> Result<f64> {
        m.reset();
        let mut tok = m.forward_argmax(&ids(prompt), 0)?;
        let mut pos = prompt;
        for _ in 0..4 {
            tok = m.forward_argmax(&[tok], pos)?;
            pos += 1;
        }
        let t0 = Instant::now();
        for _ in 0..decode {
            tok = m.forward_argmax(&[tok], pos)?;
            pos += 1;
        }
        Ok(t0.elapsed().as_secs_f64() / decode as f64)
    };
    let graphs = m.graphs();
    let td = time_decode(&mut m)?;
    let gbps = bytes as f64 / td / 1e9;
    r.info(
        &st,
        "decode tokens/s (batch 1)",
        format!(
            "{:.1} ({:.2} ms/token, weights {:.1} GB/token, {gbps:.0} GB/s; {})",
            1.0 / td,
            td * 1e3,
            bytes as f64 / 1e9,
            if m.graph_captured() && m.gpu.pdl() {
                "CUDA graph, programmatic launches"
            } else if m.graph_captured() {
                "CUDA graph"
            } else {
                "launch by launch"
            }
        ),
    );
    let (mut td_plain, captured) = (td, m.graph_captured());
    if graphs && captured {
        m.set_graphs(false);
        td_plain = time_decode(&mut m)?;
        m.set_graphs(true);
        r.info(
            &st,
            "decode without CUDA graphs",
            format!(
                "{:.1} tokens/s ({:.2} ms/token): graphs {:.3}x",
                1.0 / td_plain,
                td_plain * 1e3,
                td_plain / td
            ),
        );
    }
    // Programmatic launches (PDL) against plain graph edges, when the graph has them.
    let pdl = captured && m.gpu.pdl();
    let mut td_serial = td;
    if pdl {
        m.set_pdl(false);
        td_serial = time_decode(&mut m)?;
        m.set_pdl(true);
        r.info(
            &st,
            "decode without programmatic launches",
            format!(
                "{:.1} tokens/s ({:.2} ms/token): PDL {:.3}x",
                1.0 / td_serial,
                td_serial * 1e3,
                td_serial / td
            ),
        );
    }
    let pct = 100.0 * gbps / peak;
    // The emulator has no HBM: its figure is reported, not judged.
    let verdict = (!m.gpu.is_emulated()).then_some(pct >= 80.0);
    r.row(
        &st,
        "decode % of HBM roofline (peak)",
        format!("{pct:.1}"),
        ">= 80",
        verdict,
    );
    r.info(
        &st,
        "decode % of copy bandwidth",
        format!("{:.1}", 100.0 * gbps / copy),
    );
    r.extra.push(json!({"kind": "model", "shape": shape, "prefill_tokens": prefill, "prefill_tok_s": prefill as f64 / tp,
        "decode_tok_s": 1.0 / td, "decode_ms": td * 1e3, "weight_bytes_per_token": bytes, "decode_GBps": gbps,
        "peak_GBps": peak, "copy_GBps": copy, "pct_roofline": pct, "fp8_path": m.gemm.fp8_path(),
        "cuda_graph": captured, "decode_ms_without_graph": td_plain * 1e3, "pdl": pdl,
        "decode_ms_without_pdl": td_serial * 1e3}));
    let ids = ids(prompt);
    let kernels = decode_breakdown(&mut m, &ids, &mut |m| time_decode(m))?;
    report_breakdown(r, (&st, shape), td * 1e6, &kernels);
    decode_by_gemv_build(&mut m, (&st, shape), td, &mut |m| time_decode(m), r)
}

/// The decode step timed with the other builds of gemv.cu a tuning times first (the
/// default and `GEMV_SWEEP`), and the forms of the one in use that fetch under PDL, in place
/// of the one in use (picked at load, see [`crate::runtime::cuda::tune`]; the emulator: the first tuning
/// build only), against its `td`.
fn decode_by_gemv_build(
    m: &mut CudaModel,
    (st, shape): (&str, &str),
    td: f64,
    time_decode: &mut dyn FnMut(&mut CudaModel) -> Result<f64>,
    r: &mut Report,
) -> Result<()> {
    let in_use = m.gpu.gemv();
    let builds: Vec<GemvVariant> = match m.gpu.is_emulated() {
        true => GEMV_SWEEP[..1].to_vec(),
        false => {
            let first = std::iter::once(GEMV_DEFAULT).chain(GEMV_SWEEP.iter().copied());
            let mut seen = std::collections::HashSet::from([in_use]);
            first
                .chain(pf_forms(in_use))
                .filter(|&v| seen.insert(v))
                .collect()
        }
    };
    if let Some(t) = &m.tuning {
        r.info(st, "decode GEMV build, picked at load", t.describe());
    }
    let mut rows = Vec::new();
    for v in builds {
        m.recapture();
        m.gpu.set_gemv(v)?;
        let t = time_decode(m);
        m.recapture();
        m.gpu.set_gemv(in_use)?;
        let t = t?;
        r.info(
            st,
            &format!("decode with gemv.cu as {v}"),
            format!(
                "{:.2} ms/token: {:.3}x the speed of the build in use",
                t * 1e3,
                td / t
            ),
        );
        rows.push(
            json!({"build": v.to_string(), "default": v == GEMV_DEFAULT, "decode_ms": t * 1e3}),
        );
    }
    let trials: Vec<_> = (m.tuning.iter().flat_map(|t| &t.trials))
        .map(|t| json!({"build": t.build.to_string(), "step_ms": t.step_s.map(|s| s * 1e3), "left_out": t.left_out}))
        .collect();
    r.extra.push(
        json!({"kind": "gemv_builds", "shape": shape, "in_use": in_use.to_string(),
        "in_use_is_default": in_use == GEMV_DEFAULT, "in_use_ms": td * 1e3, "builds": rows,
        "tuning": trials}),
    );
    Ok(())
}

/// The rows and JSON record of [`decode_breakdown`]'s figures for a step of `step_us`.
fn report_breakdown(
    r: &mut Report,
    (st, shape): (&str, &str),
    step_us: f64,
    kernels: &[(String, f64)],
) {
    for (name, us) in kernels {
        r.info(
            st,
            &format!("decode step, {name} alone"),
            format!("{us:.1} us/token ({:.1}%)", 100.0 * us / step_us),
        );
    }
    let sum: f64 = kernels.iter().map(|k| k.1).sum();
    r.info(
        st,
        "decode step, sum of its kernels alone",
        format!("{sum:.1} us/token of {step_us:.1}"),
    );
    let rows: Vec<serde_json::Value> = kernels
        .iter()
        .map(|(name, us)| json!({"name": name, "us": us}))
        .collect();
    r.extra.push(
        json!({"kind": "decode_kernels", "shape": shape, "step_us": step_us, "kernels": rows}),
    );
}

/// Where a decode step's time goes: for each kernel of the step, the step replayed with
/// only that kernel's launches (every other skipped, see [`Gpu::only`]), timed as the step
/// was (`time_decode`), less the time of a step with no kernel at all (the host's share).
/// Their sum against the whole step is what the kernels' boundaries cost.
fn decode_breakdown(
    m: &mut CudaModel,
    prompt: &[u32],
    time_decode: &mut dyn FnMut(&mut CudaModel) -> Result<f64>,
) -> Result<Vec<(String, f64)>> {
    // The kernels of one decode step (captured anew, so that its launches are seen).
    m.reset();
    let tok = m.forward_argmax(prompt, 0)?;
    m.recapture();
    m.gpu.record_names();
    let step = m.forward_argmax(&[tok], prompt.len());
    let mut names = m.gpu.take_names();
    step?;
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let mut alone = |m: &mut CudaModel, only: &str| -> Result<f64> {
        m.gpu.only(Some(only));
        m.recapture();
        let t = time_decode(m);
        m.gpu.only(None);
        m.recapture();
        t
    };
    let host = alone(m, "(no kernel)")?;
    let mut out = Vec::new();
    for name in names {
        let t = alone(m, &name)?;
        out.push((name, ((t - host) * 1e6).max(0.0)));
    }
    Ok(out)
}

/// One layer's causal prefill attention over `rows` rows (random q, k, v) on CUDA cores and
/// on tensor cores, with its TFLOP/s (4·H·d·T²/2 for the two products).
fn bench_attention(
    g: &Gpu,
    dims: ops::AttnDims,
    rows: usize,
    st: &str,
    r: &mut Report,
) -> Result<()> {
    if !ops::mma_head_dim(dims.head_dim) {
        return Ok(());
    }
    let (qn, kvn) = (
        rows * dims.heads * dims.head_dim,
        rows * dims.kv_heads * dims.head_dim,
    );
    let (q, k, v, out) = (
        g.alloc(qn * 2)?,
        g.alloc(kvn * 2)?,
        g.alloc(kvn * 2)?,
        g.alloc(qn * 2)?,
    );
    for (b, n, seed) in [(&q, qn, 1), (&k, kvn, 2), (&v, kvn, 3)] {
        ops::fill_bf16_normal(g, b.ptr, n, seed, 0.0, 1.0)?;
    }
    let pos = g.upload_new(&0u32.to_le_bytes())?;
    let scale = (dims.head_dim as f32).powf(-0.5);
    let io = ops::AttnIo {
        q: q.ptr,
        cache: (k.ptr, v.ptr),
        out: out.ptr,
        rows,
        pos: pos.ptr,
        scale,
    };
    let simt = time_us(g, &mut || ops::attention_simt(g, dims, io, None))?;
    let mma = time_us(g, &mut || ops::attention_mma(g, dims, io))?;
    let flop = 2.0 * (dims.heads * dims.head_dim) as f64 * (rows * rows) as f64;
    let tflops = |us: f64| flop / us / 1e6;
    r.info(
        st,
        &format!("prefill attention of one layer, {rows} rows"),
        format!(
            "CUDA cores {simt:.0} us ({:.1} TFLOP/s), tensor cores {mma:.0} us ({:.1} TFLOP/s): {:.2}x",
            tflops(simt),
            tflops(mma),
            simt / mma
        ),
    );
    r.extra.push(
        json!({"kind": "attention", "rows": rows, "heads": dims.heads, "kv_heads": dims.kv_heads,
        "head_dim": dims.head_dim, "simt_us": simt, "mma_us": mma, "mma_tflops": tflops(mma)}),
    );
    Ok(())
}

/// DeepSeek-R1-Distill-Llama-70B's Linear shapes (N, K), q/k/v and gate/up fused.
pub const SHAPES_70B: &[(&str, usize, usize)] = &[
    ("qkv_proj", 10240, 8192),
    ("o_proj", 8192, 8192),
    ("gate_up_proj", 57344, 8192),
    ("down_proj", 8192, 28672),
];

/// Times every FP8 GEMM path on the 70B shapes at the given M (CUDA events, 20 runs after
/// 3 warm-ups).
pub fn bench_gemm(device: usize, ms: &[usize], div: usize, r: &mut Report) {
    Report::header("gemm: FP8 W8A8 paths on 70B shapes (compare gpu_torch_gemm.py)");
    if let Err(e) = gemm_all(device, ms, div, r) {
        r.error("gemm", &e.to_string());
    }
}

fn time_us(g: &Gpu, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    g.sync()?;
    let iters = 20;
    if g.is_emulated() {
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            f()?;
        }
        return Ok(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
    let (ctx, stream) = g.cuda()?;
    // cudarc's default flags (None) disable timing: elapsed_ms would then always fail.
    let ev = || {
        ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| Error::Runtime(format!("CUDA event: {e:?}")))
    };
    let (a, b) = (ev()?, ev()?);
    a.record(stream)
        .map_err(|e| Error::Runtime(format!("{e:?}")))?;
    for _ in 0..iters {
        f()?;
    }
    b.record(stream)
        .map_err(|e| Error::Runtime(format!("{e:?}")))?;
    g.sync()?;
    let ms = a
        .elapsed_ms(&b)
        .map_err(|e| Error::Runtime(format!("{e:?}")))?;
    Ok(ms as f64 * 1e3 / iters as f64)
}

fn gemm_all(device: usize, ms: &[usize], div: usize, r: &mut Report) -> Result<()> {
    let g = Gpu::new(device)?;
    let mut gemm = Gemm::new(&g, GemmMode::Auto)?;
    r.info("gemm", "engine", gemm.note.clone());
    let mmax = ms.iter().copied().max().unwrap_or(1);
    for &(name, n, k) in SHAPES_70B {
        let (n, k) = (n / div, k / div);
        let (w, sw) = (g.alloc(n * k)?, g.alloc(n * 4)?);
        ops::fill_fp8_normal(&g, w.ptr, n * k, 11)?;
        ops::fill_f32(&g, sw.ptr, n, 0.02 / 112.0)?;
        let (x, sa) = (g.alloc(mmax * k)?, g.alloc(mmax * 4)?);
        ops::fill_fp8_normal(&g, x.ptr, mmax * k, 12)?;
        ops::fill_f32(&g, sa.ptr, mmax, 0.01)?;
        let y = g.alloc(mmax * n * 2)?;
        let acc = g.alloc(mmax * n * 4)?;
        for &m in ms {
            let mut paths: Vec<(&str, f64)> = Vec::new();
            // qforge's GEMV (decode), or its own GEMM (W8A8/FP8_BLOCK prefill, FP8 without
            // cuBLASLt).
            let (path, launch): (_, fn(_, _, _, _, _, _) -> _) = match m <= ops::GEMV_MAX_ROWS {
                true => ("qforge-gemv", ops::gemv_codes),
                false => ("qforge-gemm", ops::gemm_codes),
            };
            let (wq, xq) = ((w.ptr, sw.ptr, 0), (x.ptr, sa.ptr));
            let t = time_us(&g, &mut || launch(&g, Codes::Fp8, wq, xq, y.ptr, (m, n, k)))?;
            paths.push((path, t));
            if let Some(b) = gemm.blas.as_mut() {
                match time_us(&g, &mut || {
                    b.matmul(
                        Kind::Fp8Scaled,
                        (m, n, k),
                        w.ptr,
                        x.ptr,
                        y.ptr,
                        sa.ptr,
                        sw.ptr,
                        &g,
                    )
                }) {
                    Ok(t) => paths.push(("cublaslt-scaled", t)),
                    Err(e) => r.info(
                        "gemm",
                        &format!("{name} M={m} cublaslt-scaled"),
                        format!("n/a: {e}"),
                    ),
                }
                let res = time_us(&g, &mut || {
                    b.matmul(Kind::Fp8Raw, (m, n, k), w.ptr, x.ptr, acc.ptr, 0, 0, &g)?;
                    ops::scale_epilogue(&g, acc.ptr, sa.ptr, sw.ptr, 0, m, n, y.ptr)
                });
                match res {
                    Ok(t) => paths.push(("cublaslt-f32+epilogue", t)),
                    Err(e) => r.info(
                        "gemm",
                        &format!("{name} M={m} cublaslt-f32"),
                        format!("n/a: {e}"),
                    ),
                }
            }
            for (path, us) in paths {
                let tflops = 2.0 * (m * n * k) as f64 / us / 1e6;
                let gbps = (n * k) as f64 / us / 1e3;
                r.info(
                    "gemm",
                    &format!("{name} M={m} {path}"),
                    format!("{us:.1} us, {tflops:.1} TFLOP/s, {gbps:.0} GB/s weights"),
                );
                r.extra.push(json!({"kind": "gemm", "shape": name, "M": m, "N": n, "K": k, "path": path, "us": us, "TFLOPs": tflops, "weight_GBps": gbps}));
            }
        }
    }
    Ok(())
}
