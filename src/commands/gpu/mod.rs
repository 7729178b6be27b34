//! `qforge gpu …`: hidden developer subcommands that check and measure the CUDA backend on a
//! machine that has only the built binary (scripts/gpu_check.sh runs them).

pub mod bench;
pub mod randmodel;
pub mod report;
pub mod selftest;

use crate::runtime::cuda::{gpu, nvrtc};
use crate::Result;
use clap::{Args, Subcommand};
use report::Report;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `qforge gpu`.
#[derive(Debug, Args)]
pub struct GpuArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, global = true)]
    pub device: usize,
    /// Also write the result rows as JSON here.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    #[command(subcommand)]
    pub command: GpuCommand,
}

#[derive(Debug, Subcommand)]
pub enum GpuCommand {
    /// Driver, GPU, NVRTC, cuBLASLt; compiles (or loads cached) kernels and times it.
    Info,
    /// CUDA vs CPU: FP8 conversions, Linear goldens, tiny fixtures, a random 1B model.
    Selftest {
        /// The shared fixtures folder (tiny checkpoints + goldens); skipped when absent.
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Greedy steps of the random-1B comparison (0 skips it: the emulator is too slow
        /// for a 1B model).
        #[arg(long, default_value_t = 12)]
        steps: usize,
    },
    /// Decode / prefill tokens/s of random FP8 models created in GPU memory.
    Bench {
        /// Model shapes: llama-1b, llama-8b, llama-70b, or a config.json.
        #[arg(long, value_delimiter = ',', default_value = "llama-8b,llama-70b")]
        shapes: Vec<String>,
        /// Prompt tokens before the timed decode steps.
        #[arg(long, default_value_t = 128)]
        prompt: usize,
        /// Timed decode steps.
        #[arg(long, default_value_t = 64)]
        decode: usize,
        /// Prefill tokens (one forward).
        #[arg(long, default_value_t = 2048)]
        prefill: usize,
    },
    /// The FP8 GEMM paths alone on 70B shapes.
    Gemm {
        #[arg(long, value_delimiter = ',', default_value = "1,16,128,2048")]
        m: Vec<usize>,
        /// Divide N and K by this (smoke runs of scripts/gpu_check.sh on the emulator).
        #[arg(long, default_value_t = 1, hide = true)]
        div: usize,
    },
}

/// Runs a `qforge gpu` subcommand; the exit code is 1 when any check failed.
pub fn run(args: &GpuArgs) -> Result<ExitCode> {
    let mut r = Report {
        json: args.json.clone(),
        ..Report::default()
    };
    match &args.command {
        GpuCommand::Info => info(args.device, &mut r),
        GpuCommand::Selftest { fixtures, steps } => {
            selftest::run(args.device, fixtures.as_deref(), *steps, &mut r)
        }
        GpuCommand::Bench {
            shapes,
            prompt,
            decode,
            prefill,
        } => bench::bench_models(
            args.device,
            shapes,
            *prompt,
            (*decode).max(1),
            *prefill,
            &mut r,
        ),
        GpuCommand::Gemm { m, div } => bench::bench_gemm(args.device, m, (*div).max(1), &mut r),
    }
    r.write_json(args.json.as_deref());
    let failed = r.failures();
    println!(
        "\n{} checks, {failed} failed",
        r.rows.iter().filter(|x| x.pass.is_some()).count()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn info(device: usize, r: &mut Report) {
    Report::header("info");
    match gpu::probe(device) {
        Ok(i) => {
            r.info(
                "info",
                "gpu",
                format!(
                    "{} (cc {}.{}, {}, {} SMs, {:.1} GiB)",
                    i.name,
                    i.cc.0,
                    i.cc.1,
                    i.arch,
                    i.sm_count,
                    i.total_mem as f64 / (1u64 << 30) as f64
                ),
            );
            r.info("info", "driver", format!("{}", i.driver_version));
        }
        Err(e) => return r.error("info", &e.to_string()),
    }
    match (nvrtc::get(), crate::runtime::cuda::emu::enabled()) {
        (Ok(nv), _) => r.info(
            "info",
            "nvrtc",
            format!("{}.{} at {}", nv.version.0, nv.version.1, nv.path.display()),
        ),
        (Err(e), true) => r.info("info", "nvrtc", format!("not used by the emulator ({e})")),
        (Err(e), false) => r.error("nvrtc", &e.to_string()),
    }
    if crate::runtime::cuda::emu::enabled() {
        match crate::runtime::cuda::emu::get() {
            Ok(e) => r.info(
                "info",
                "emulator",
                format!(
                    "{}, {} threads, {}",
                    e.compiler,
                    e.threads,
                    e.path.display()
                ),
            ),
            Err(e) => r.error("emulator", &e.to_string()),
        }
    }
    match gpu::Gpu::new(device) {
        Ok(g) => {
            let how = if g.kernels_cached {
                "loaded from cache"
            } else {
                "compiled"
            };
            r.row(
                "info",
                &format!(
                    "kernels {how} ({})",
                    crate::runtime::cuda::kernels::cache_dir().display()
                ),
                format!("{:.2} s", g.compile_s),
                "",
                Some(true),
            );
            for k in g.short_kernels() {
                r.error("kernel block", &k);
            }
            match crate::runtime::cuda::gemm::Gemm::new(
                &g,
                crate::runtime::cuda::gemm::GemmMode::Auto,
            ) {
                Ok(m) => r.info("info", "gemm", m.note),
                Err(e) => r.error("cublaslt", &e.to_string()),
            }
        }
        Err(e) => r.error("kernels", &e.to_string()),
    }
}
