//! Compiles every kernel in `kernels/` with NVRTC for Hopper (sm_90a) and Ada (sm_89) and
//! fails on any error or warning: the only check of the GPU code that runs without a GPU.
//!
//! NVRTC comes from `$QFORGE_NVRTC_LIB` (path of libnvrtc.so.13), `$QFORGE_NVRTC_DIR`, a CUDA
//! toolkit, or a Python site-packages `nvidia/cu13/lib` (scripts/install_nvrtc.sh sets it up
//! from PyPI). Without it the test prints "skipped: ..." and passes, unless
//! `$QFORGE_REQUIRE_NVRTC` is set (CI sets it).
#![cfg(feature = "cuda")]

use qforge::runtime::cuda::kernels::{self, FUNCTIONS, SOURCES};
use qforge::runtime::cuda::nvrtc::Nvrtc;
use std::path::PathBuf;
use std::process::Command;

/// Site-packages folders as Python reports them (empty when there is no python3).
fn python_site_packages() -> Vec<PathBuf> {
    let code = "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))";
    Command::new("python3")
        .args(["-c", code])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// NVRTC: the env vars and the library's own search first, then python's site-packages.
fn find_nvrtc() -> Result<Nvrtc, String> {
    let first = match Nvrtc::find() {
        Ok(nv) => return Ok(nv),
        Err(e) => e.to_string(),
    };
    for sp in python_site_packages() {
        for sub in [
            "nvidia/cu13/lib/libnvrtc.so.13",
            "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
        ] {
            let p = sp.join(sub);
            if p.exists() {
                return Nvrtc::open(&p).map_err(|e| e.to_string());
            }
        }
    }
    Err(first)
}

fn nvrtc_or_skip() -> Option<Nvrtc> {
    match find_nvrtc() {
        Ok(nv) => Some(nv),
        Err(e) if std::env::var_os("QFORGE_REQUIRE_NVRTC").is_some() => {
            panic!("QFORGE_REQUIRE_NVRTC is set but NVRTC is unusable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Every source compiles without a message for both target architectures, and every kernel
/// the runtime loads by name is in the cubin of the source the registry says.
#[test]
fn every_kernel_compiles_clean_for_sm90a_and_sm89() {
    let Some(nv) = nvrtc_or_skip() else { return };
    eprintln!(
        "NVRTC {}.{} at {}",
        nv.version.0,
        nv.version.1,
        nv.path.display()
    );
    let archs = nv.supported_archs();
    assert!(
        archs.contains(&90) && archs.contains(&89),
        "NVRTC supports {archs:?}"
    );
    let mut failures = Vec::new();
    for arch in ["sm_90a", "sm_89"] {
        let opts = kernels::options(arch);
        for (name, src) in SOURCES {
            match kernels::compile_clean(&nv, name, src, &opts) {
                Ok(cubin) => {
                    for (_, f) in FUNCTIONS.iter().filter(|(s, _)| s == name) {
                        let found = cubin.windows(f.len()).any(|w| w == f.as_bytes());
                        if !found {
                            failures.push(format!("{arch} {name}: kernel {f} not in the cubin"));
                        }
                    }
                    eprintln!("{arch} {name}: {} bytes", cubin.len());
                }
                Err(e) => failures.push(format!("{arch}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The hot kernels keep everything in registers: ptxas reports no spills for them on Hopper.
#[test]
fn hot_kernels_do_not_spill() {
    let Some(nv) = nvrtc_or_skip() else { return };
    let mut opts = kernels::options("sm_90a");
    opts.push("--ptxas-options=-v".into());
    for name in ["gemv.cu", "gemm.cu", "attention.cu", "norm.cu", "rope.cu"] {
        let src = SOURCES.iter().find(|s| s.0 == name).unwrap().1;
        let c = nv.compile(name, src, kernels::HEADERS, &opts).unwrap();
        assert!(
            c.log.contains("spill stores"),
            "{name}: no ptxas report:\n{}",
            c.log
        );
        for l in c
            .log
            .lines()
            .filter(|l| l.contains("Compiling entry") || l.contains("Used"))
        {
            eprintln!("{name}: {}", l.trim()); // registers per kernel, with --nocapture
        }
        let spills: Vec<&str> = c
            .log
            .lines()
            .filter(|l| {
                l.contains("spill") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
            })
            .collect();
        assert!(spills.is_empty(), "{name} spills:\n{}", c.log);
    }
}

/// A broken source is reported as an error carrying NVRTC's log (the check above can fail).
#[test]
fn compile_errors_are_reported() {
    let Some(nv) = nvrtc_or_skip() else { return };
    let opts = kernels::options("sm_90a");
    let bad = "extern \"C\" __global__ void k(int* p) { p[0] = undefined_name; }";
    let e = kernels::compile_clean(&nv, "bad.cu", bad, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("undefined_name"), "{e}");
    let warn = "extern \"C\" __global__ void k(int* p) { int unused = 3; p[0] = 1; }";
    let e = kernels::compile_clean(&nv, "warn.cu", warn, &opts);
    assert!(e.is_err(), "a warning must fail the clean compile");
}
