//! Compiles every kernel in `kernels/` with NVRTC for Hopper (sm_90a) and Ada (sm_89) and
//! fails on any error or warning: the only check of the GPU code that runs without a GPU.
//!
//! NVRTC comes from `$QFORGE_NVRTC_LIB` (path of libnvrtc.so.13), `$QFORGE_NVRTC_DIR`, a CUDA
//! toolkit, or a Python site-packages `nvidia/cu13/lib` (scripts/install_nvrtc.sh sets it up
//! from PyPI). The tests are ignored when the build saw neither `$QFORGE_NVRTC_LIB`,
//! `$QFORGE_NVRTC_DIR` nor a toolkit, unless `$QFORGE_REQUIRE_NVRTC` is set (CI sets it).

use crate::support::nvrtc::{cubin_facts, nvrtc, sections};
use crate::support::requires;
use qforge::runtime::cuda::kernels::{
    self, GemvVariant, FUNCTIONS, GEMV_DEFAULT, GEMV_SWEEP, GEMV_VARIANT_KERNELS, SOURCES,
};
use qforge::runtime::cuda::tune;

/// Every source compiles without a message for both target architectures, and every kernel
/// the runtime loads by name is in the cubin of the source the registry says.
#[requires(nvrtc)]
#[test]
fn every_kernel_compiles_clean_for_sm90a_and_sm89() {
    let nv = nvrtc();
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
                    for f in FUNCTIONS
                        .iter()
                        .filter(|k| k.source == *name)
                        .map(|k| k.name)
                    {
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
#[requires(nvrtc)]
#[test]
fn hot_kernels_do_not_spill() {
    let nv = nvrtc();
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

/// Registers a block of `threads` threads takes: whole warps, each warp's registers
/// allocated in units of 256.
fn block_registers(regs: u32, threads: u32) -> u32 {
    threads.div_ceil(32) * (regs * 32).div_ceil(256) * 256
}

/// Every kernel can run the largest block the host launches it with (kernels::FUNCTIONS), on
/// Hopper and Ada: the block is within the kernel's `__launch_bounds__`, and its registers
/// fit the SM's 64 Ki. The registers read from the cubin are checked against ptxas's own
/// report, so the reading cannot silently go wrong.
#[requires(nvrtc)]
#[test]
fn every_kernel_fits_its_largest_block() {
    let nv = nvrtc();
    let mut failures = Vec::new();
    for arch in ["sm_90a", "sm_89"] {
        let mut opts = kernels::options(arch);
        opts.push("--ptxas-options=-v".into());
        for (name, src) in SOURCES {
            let c = nv.compile(name, src, kernels::HEADERS, &opts).unwrap();
            let facts = cubin_facts(&c.cubin);
            // ptxas: "Compiling entry function 'k' for 'sm_90a'" ... "Used N registers".
            let mut entry = String::new();
            for l in c.log.lines() {
                if let Some(rest) = l.split("entry function '").nth(1) {
                    entry = rest.split('\'').next().unwrap().to_string();
                } else if let Some(rest) = l.split("Used ").nth(1) {
                    let used: u32 = rest.split(' ').next().unwrap().parse().unwrap();
                    let read = facts.get(&entry).and_then(|f| f.regs);
                    assert_eq!(read, Some(used), "{arch} {entry}: registers in the cubin");
                }
            }
            for k in FUNCTIONS.iter().filter(|k| k.source == *name) {
                let f = facts[k.name];
                let regs = f.regs.unwrap();
                if let Some(bound) = f.bound {
                    if k.threads > bound {
                        failures.push(format!(
                            "{arch} {}: launched with {} threads, __launch_bounds__({bound})",
                            k.name, k.threads
                        ));
                    }
                }
                let need = block_registers(regs, k.threads);
                if need > 65536 {
                    failures.push(format!(
                        "{arch} {}: {regs} registers × {} threads need {need} of 65536",
                        k.name, k.threads
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// gemv.cu's tuning builds (`kernels::GEMV_SWEEP`, timed by `gpu selftest`) compile clean
/// for both targets, hold their kernels with `__launch_bounds__` of their own block, and fit
/// it; the knobs without `GEMV_SWEEP` are refused (the other GEMVs assume the defaults).
#[requires(nvrtc)]
#[test]
fn gemv_sweep_builds_compile_clean_and_fit() {
    let nv = nvrtc();
    let src = SOURCES.iter().find(|s| s.0 == "gemv.cu").unwrap().1;
    for arch in ["sm_90a", "sm_89"] {
        for &v in GEMV_SWEEP {
            let mut opts = kernels::options(arch);
            opts.extend(v.defines());
            let cubin = kernels::compile_clean(&nv, "gemv.cu", src, &opts)
                .unwrap_or_else(|e| panic!("{arch} {v}: {e}"));
            let facts = cubin_facts(&cubin);
            for &name in GEMV_VARIANT_KERNELS {
                let f = facts[name];
                assert_eq!(f.bound, Some(v.threads()), "{arch} {v} {name}");
                let need = block_registers(f.regs.unwrap(), v.threads());
                assert!(need <= 65536, "{arch} {v} {name}: {need} registers");
            }
            assert!(!facts.contains_key("gemv_fp8_block"), "{arch} {v}");
        }
    }
    for knob in ["-DGEMV_WARPS=8", "-DGEMV_CVT=1", "-DGEMV_PF=1"] {
        let mut opts = kernels::options("sm_90a");
        opts.push(knob.into());
        let e = kernels::compile_clean(&nv, "gemv.cu", src, &opts).unwrap_err();
        assert!(
            e.to_string().contains("for GEMV_SWEEP builds only"),
            "{knob}: {e}"
        );
    }
}

/// Sm_90a opcodes (the low 12 bits of a 16-byte instruction, as nvdisasm 13.5 prints
/// NVRTC 13.0's cubins): a global load, a bulk prefetch to L2, and `griddepcontrol.wait`.
const LDG: u64 = 0x981;
const UBLKPF: u64 = 0x3bc;
const ACQBULK: u64 = 0x82e;

/// The global loads and bulk L2 prefetches kernel `name` of an sm_90a cubin issues before
/// its first wait for the previous kernel (`None`: it never waits).
fn fetches_before_the_wait(cubin: &[u8], name: &str) -> Option<(usize, usize)> {
    let text = format!(".text.{name}");
    let (_, off, size, _) = sections(cubin).into_iter().find(|s| s.0 == text).unwrap();
    let ops: Vec<u64> = (off..off + size)
        .step_by(16)
        .map(|o| u64::from_le_bytes(cubin[o..o + 8].try_into().unwrap()) & 0xfff)
        .collect();
    let before = &ops[..ops.iter().position(|&o| o == ACQBULK)?];
    let count = |op: u64| before.iter().filter(|&&o| o == op).count();
    Some((count(LDG), count(UBLKPF)))
}

/// Under a programmatic launch, a GEMV is meant to fetch weights while the previous kernel
/// finishes. The default build's SASS waits first: ptxas moves the wait above the loads
/// written before it. `GEMV_PF` forms keep all of the first step's weight loads (two rows
/// × their chunks per thread) before it, and `-pf2` also its two bulk prefetches (rows g
/// and g + 8 of the thread's group). Checked for every build a tuning may pick (each build
/// of the sweep in each form), which also compiles clean and fits its block.
#[requires(nvrtc)]
#[test]
fn gemv_pf_builds_fetch_weights_before_the_wait() {
    let nv = nvrtc();
    let src = SOURCES.iter().find(|s| s.0 == "gemv.cu").unwrap().1;
    let all: Vec<GemvVariant> = tune::builds().collect();
    let compile = |v: GemvVariant| {
        let mut opts = kernels::options("sm_90a");
        if v != GEMV_DEFAULT {
            opts.extend(v.defines());
        }
        kernels::compile_clean(&nv, "gemv.cu", src, &opts).unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    // Two at a time: NVRTC takes seconds per build.
    let cubins: Vec<Vec<u8>> = all
        .chunks(2)
        .flat_map(|pair| {
            std::thread::scope(|s| {
                let jobs: Vec<_> = pair.iter().map(|&v| s.spawn(move || compile(v))).collect();
                jobs.into_iter()
                    .map(|j| j.join().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = [0; 3];
    for (&v, cubin) in all.iter().zip(&cubins) {
        let loads = 2 * v.unroll as usize;
        let want = [(0, 0), (loads, 0), (loads, 2)][v.pf as usize];
        let facts = cubin_facts(cubin);
        for &name in GEMV_VARIANT_KERNELS {
            let got = fetches_before_the_wait(cubin, name);
            assert_eq!(
                got,
                Some(want),
                "{v} {name}: (loads, prefetches) before the wait"
            );
            let need = block_registers(facts[name].regs.unwrap(), v.threads());
            assert!(need <= 65536, "{v} {name}: {need} registers");
        }
        seen[v.pf as usize] += 1;
    }
    assert_eq!(seen, [1 + GEMV_SWEEP.len(); 3], "builds per GEMV_PF");
}

#[test]
fn block_registers_count_whole_warps_in_units_of_256() {
    assert_eq!(block_registers(128, 512), 65536); // add_rmsnorm: exactly an SM's file
    assert_eq!(block_registers(129, 512), 16 * 4352); // 129·32 = 4128 → 4352
    assert_eq!(block_registers(30, 1000), 32 * 1024);
}

/// A broken source is reported as an error carrying NVRTC's log (the check above can fail).
#[requires(nvrtc)]
#[test]
fn compile_errors_are_reported() {
    let nv = nvrtc();
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
