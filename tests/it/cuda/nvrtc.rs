//! Compiles every kernel in `kernels/` with NVRTC for Hopper (sm_90a) and Ada (sm_89) and
//! fails on any error or warning: the only check of the GPU code that runs without a GPU.
//!
//! NVRTC comes from `$QFORGE_NVRTC_LIB` (path of libnvrtc.so.13), `$QFORGE_NVRTC_DIR`, a CUDA
//! toolkit, or a Python site-packages `nvidia/cu13/lib` (scripts/install_nvrtc.sh sets it up
//! from PyPI). The tests are ignored when the build saw neither `$QFORGE_NVRTC_LIB`,
//! `$QFORGE_NVRTC_DIR` nor a toolkit, unless `$QFORGE_REQUIRE_NVRTC` is set (CI sets it).

use crate::support::requires;
use qforge::runtime::cuda::kernels::{
    self, GemvVariant, FUNCTIONS, GEMV_DEFAULT, GEMV_SWEEP, GEMV_VARIANT_KERNELS, SOURCES,
};
use qforge::runtime::cuda::nvrtc::Nvrtc;
use qforge::runtime::cuda::tune;
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

/// NVRTC, for tests marked `#[requires(nvrtc)]`: the build found it (or
/// QFORGE_REQUIRE_NVRTC is set, as in CI), so it must load.
fn nvrtc() -> Nvrtc {
    find_nvrtc().unwrap_or_else(|e| panic!("NVRTC is required but unusable: {e}"))
}

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

/// What a cubin says of each kernel: registers per thread (`EIATTR_REGCOUNT` in `.nv.info`,
/// keyed by symbol) and the `__launch_bounds__` block (`EIATTR_MAX_THREADS` in
/// `.nv.info.<kernel>`). The cubin is a little-endian ELF64; `.nv.info*` sections hold
/// records of (format, attribute, and a 2-byte value or a 2-byte size + that many bytes).
#[derive(Debug, Default, Clone, Copy)]
struct Facts {
    regs: Option<u32>,
    bound: Option<u32>,
}

/// The NUL-terminated string at byte `o` of `elf`.
fn cstr(elf: &[u8], o: usize) -> String {
    let end = elf[o..].iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&elf[o..o + end]).into_owned()
}

/// (name, offset, size, link) of every section of a cubin (a little-endian ELF64).
fn sections(elf: &[u8]) -> Vec<(String, usize, usize, usize)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not an ELF64 cubin");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3A), u16_at(0x3C), u16_at(0x3E));
    let names = u64_at(shoff + shstrndx * shentsize + 24);
    (0..shnum)
        .map(|i| shoff + i * shentsize)
        .map(|h| {
            let name = cstr(elf, names + word(elf, h) as usize);
            let link = word(elf, h + 40) as usize;
            (name, u64_at(h + 24), u64_at(h + 32), link)
        })
        .collect()
}

fn cubin_facts(elf: &[u8]) -> std::collections::HashMap<String, Facts> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| word(elf, o);
    let sections = sections(elf);
    // Records (attribute, value bytes) of one .nv.info section.
    let records = |off: usize, size: usize| {
        let mut out = Vec::new();
        let mut p = off;
        while p < off + size {
            let (format, attr) = (elf[p], elf[p + 1]);
            if format == 4 {
                let n = u16_at(p + 2);
                out.push((attr, elf[p + 4..p + 4 + n].to_vec()));
                p += 4 + n;
            } else {
                out.push((attr, elf[p + 2..p + 4].to_vec()));
                p += 4;
            }
        }
        out
    };
    let symtab = sections.iter().find(|s| s.0 == ".symtab").unwrap();
    let strtab = sections[symtab.3].1;
    let symbol = |i: usize| cstr(elf, strtab + u32_at(symtab.1 + 24 * i) as usize);
    let mut facts: std::collections::HashMap<String, Facts> = Default::default();
    for (name, off, size, _) in &sections {
        if name == ".nv.info" {
            for (attr, v) in records(*off, *size) {
                if attr == 0x2f {
                    let (sym, regs) = (word(&v, 0), word(&v, 4));
                    facts.entry(symbol(sym as usize)).or_default().regs = Some(regs);
                }
            }
        } else if let Some(kernel) = name.strip_prefix(".nv.info.") {
            for (attr, v) in records(*off, *size) {
                if attr == 0x05 {
                    let (x, y, z) = (word(&v, 0), word(&v, 4), word(&v, 8));
                    facts.entry(kernel.to_string()).or_default().bound = Some(x * y * z);
                }
            }
        }
    }
    facts
}

/// The little-endian u32 at byte `o` of `v`.
fn word(v: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(v[o..o + 4].try_into().unwrap())
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

/// The tuning builds compile at once, one NVRTC program per thread (as a model's load does
/// before timing them), each into the kernel cache with its own kernels and block.
#[requires(nvrtc)]
#[test]
fn gemv_builds_compile_concurrently_into_the_cache() {
    let nv = nvrtc();
    let cache = tempfile::tempdir().unwrap();
    // Only this test of the binary reads the kernel cache.
    std::env::set_var("QFORGE_KERNEL_CACHE", cache.path());
    let cubins = kernels::load_gemv_variants(&nv, "sm_90a", GEMV_SWEEP);
    assert_eq!(cubins.len(), GEMV_SWEEP.len());
    for (c, &v) in cubins.iter().zip(GEMV_SWEEP) {
        let c = c.as_ref().unwrap_or_else(|e| panic!("{v}: {e}"));
        let facts = cubin_facts(c);
        assert_eq!(facts["gemv_fp8"].bound, Some(v.threads()), "{v}");
    }
    let stored = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(stored, GEMV_SWEEP.len(), "one cubin per build in the cache");
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
