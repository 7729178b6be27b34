//! The kernel sources (`kernels/*.cu`, embedded in the binary), their NVRTC options, and the
//! on-disk cubin cache: compiled once per (source, arch, NVRTC version, options), so the
//! second run starts at once.

use super::nvrtc::Nvrtc;
use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Headers the sources `#include`, by include name.
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("mma.cuh", include_str!("../../../kernels/mma.cuh")),
];

/// Every kernel source file, by file name.
pub const SOURCES: &[(&str, &str)] = &[
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("rope.cu", include_str!("../../../kernels/rope.cu")),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    ("gemv.cu", include_str!("../../../kernels/gemv.cu")),
    ("gemm.cu", include_str!("../../../kernels/gemm.cu")),
    ("sample.cu", include_str!("../../../kernels/sample.cu")),
];

/// One kernel entry point: the source that defines it, and the largest block (threads) the
/// host ever launches it with. [`super::gpu::Gpu::launch`] refuses a bigger block;
/// tests/it/cuda/nvrtc.rs checks on the compiled cubins that this block fits the kernel's
/// `__launch_bounds__` and registers, so a kernel that outgrows its block fails in CI rather
/// than at its first launch on a GPU; and a real GPU is asked at load (`gpu info` lists any
/// kernel it cannot run in this block).
pub struct Kernel {
    pub source: &'static str,
    pub name: &'static str,
    pub threads: u32,
}

const fn k(source: &'static str, name: &'static str, threads: u32) -> Kernel {
    Kernel {
        source,
        name,
        threads,
    }
}

/// Every kernel entry point.
pub const FUNCTIONS: &[Kernel] = &[
    k("norm.cu", "embed_gather", 256),
    k("norm.cu", "add_rmsnorm", 512),
    k("norm.cu", "silu_mul", 512),
    k("norm.cu", "quant_rows", 512),
    k("norm.cu", "quant_groups", 512),
    k("norm.cu", "scale_epilogue", 256),
    k("rope.cu", "rope_qkv", 256),
    k("attention.cu", "attention", 256),
    k("attention.cu", "attention_combine", 256),
    k("attention.cu", "attention_mma_64", 128),
    k("attention.cu", "attention_mma_128", 128),
    k("attention.cu", "attention_mma_256", 128),
    k("gemv.cu", "gemv_fp8", 128),
    k("gemv.cu", "gemv_bf16", 128),
    k("gemv.cu", "gemv_int8", 128),
    k("gemv.cu", "gemv_fp8_block", 128),
    k("gemm.cu", "gemm_fp8", 128),
    k("gemm.cu", "gemm_int8", 128),
    k("gemm.cu", "gemm_fp8_block", 128),
    k("gemv.cu", "gemv_int4g", 128),
    k("gemv.cu", "gemv_int4h", 128),
    k("gemv.cu", "gemv_int8g", 128),
    k("gemv.cu", "gemv_fp4g", 128),
    k("gemv.cu", "dequant_int4g", 256),
    k("gemv.cu", "dequant_int4h", 256),
    k("gemv.cu", "dequant_int8g", 256),
    k("gemv.cu", "dequant_fp4g", 256),
    k("sample.cu", "argmax_rows", 1024),
    k("sample.cu", "top_k_rows", 1024),
    k("sample.cu", "fill_fp8_normal", 256),
    k("sample.cu", "fill_bf16_normal", 256),
    k("sample.cu", "fill_f32", 256),
    k("sample.cu", "fp8_probe", 256),
];

/// The largest block kernel `name` is launched with (`None`: no such kernel).
pub fn max_threads(name: &str) -> Option<u32> {
    FUNCTIONS.iter().find(|k| k.name == name).map(|k| k.threads)
}

/// A build of `kernels/gemv.cu` with other tuning values: `warps` warps per block
/// (`GEMV_WARPS`), `unroll` 64-byte chunks per warp step (`GEMV_UNROLL`), and how FP8
/// products reach the tensor cores (`cvt`, `GEMV_CVT`: 0 `mma_e4m3`; 1 f16 `mma` with the
/// activations converted by integer instructions; 2 also weight rows 8-15; see
/// kernels/mma.cuh), and what a block fetches before the wait for the previous kernel under
/// a programmatic launch (`pf`, `GEMV_PF`: 0 nothing, as ptxas orders the default build; 1
/// its first weights, waiting for them; 2 those, and its next steps into L2; see gemv.cu's
/// `gemv_sums`). Such a build has only the [`GEMV_VARIANT_KERNELS`]; they run in place of
/// the default build's (see [`super::gpu::Gpu::set_gemv`]) when a model picks it at load
/// ([`super::tune`]) and in `gpu selftest`'s gemv-sweep stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemvVariant {
    pub warps: u32,
    pub unroll: u32,
    pub cvt: u32,
    pub pf: u32,
}

/// The build every other kernel is written against.
pub const GEMV_DEFAULT: GemvVariant = gv(4, 4, 0, 0);

/// The builds timed against [`GEMV_DEFAULT`] (at load, and by the gemv-sweep stage), without
/// fetching under PDL: a load then times [`pf_forms`] of the fastest.
pub const GEMV_SWEEP: &[GemvVariant] = &[
    gv(8, 2, 0, 0),
    gv(8, 4, 0, 0),
    gv(4, 2, 0, 0),
    gv(4, 8, 0, 0),
    gv(4, 4, 1, 0),
    gv(4, 4, 2, 0),
];

/// The same build with each value of `GEMV_PF` (fetching under PDL): its own form and the
/// others. A tuning times those of its first round's pick ([`super::tune`]).
pub fn pf_forms(v: GemvVariant) -> impl Iterator<Item = GemvVariant> {
    (0..=2).map(move |pf| GemvVariant { pf, ..v })
}

/// The builds the emulator checks against the default one: both tuning values changed, and
/// every conversion path of `GEMV_CVT` (rows 0-7 by F2FP, rows 8-15 and the activations by
/// integer instructions), and both ways of `GEMV_PF`.
pub const GEMV_EMULATED: &[GemvVariant] = &[gv(8, 2, 0, 0), gv(4, 4, 2, 1), gv(4, 4, 0, 2)];

const fn gv(warps: u32, unroll: u32, cvt: u32, pf: u32) -> GemvVariant {
    GemvVariant {
        warps,
        unroll,
        cvt,
        pf,
    }
}

/// The kernels of a [`GemvVariant`] build.
pub const GEMV_VARIANT_KERNELS: &[&str] = &["gemv_fp8", "gemv_int8", "gemv_bf16"];

impl GemvVariant {
    /// Threads per block.
    pub fn threads(self) -> u32 {
        32 * self.warps
    }

    /// NVRTC (and emulator) options of the build.
    pub fn defines(self) -> Vec<String> {
        vec![
            "-DGEMV_SWEEP".to_string(),
            format!("-DGEMV_WARPS={}", self.warps),
            format!("-DGEMV_UNROLL={}", self.unroll),
            format!("-DGEMV_CVT={}", self.cvt),
            format!("-DGEMV_PF={}", self.pf),
        ]
    }

    /// The short name `QFORGE_GEMV` takes: `WARPSxCHUNKS`, with `-cvtN` when `cvt` is N > 0,
    /// `-pf` when `pf` is 1 and `-pf2` when 2.
    pub fn name(self) -> String {
        let mut s = format!("{}x{}", self.warps, self.unroll);
        if self.cvt > 0 {
            s += &format!("-cvt{}", self.cvt);
        }
        match self.pf {
            0 => {}
            1 => s += "-pf",
            p => s += &format!("-pf{p}"),
        }
        s
    }
}

impl std::fmt::Display for GemvVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} warps x {} chunks", self.warps, self.unroll)?;
        match self.cvt {
            0 => Ok(()),
            1 => write!(f, ", fp8 as f16 (x by integer ops)"),
            _ => write!(f, ", fp8 as f16 (x, rows 8-15 by integer ops)"),
        }?;
        match self.pf {
            0 => Ok(()),
            1 => write!(f, ", weights before the wait"),
            _ => write!(f, ", weights before the wait, next steps to L2"),
        }
    }
}

/// `kernels/gemv.cu`'s cubin for `arch` built as `v`, from the cache or compiled.
/// Kept in memory too: a model's load switches builds a dozen times, and a kernel cache that
/// cannot be written would otherwise cost a compile at each switch.
pub fn load_gemv_variant(nv: &Nvrtc, arch: &str, v: GemvVariant) -> Result<Vec<u8>> {
    type Memo = Mutex<HashMap<(String, GemvVariant), Vec<u8>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let memo = MEMO.get_or_init(Memo::default);
    let key = (arch.to_string(), v);
    if let Some(b) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(b);
    }
    let mut opts = options(arch);
    opts.extend(v.defines());
    let &(name, src) = (SOURCES.iter().find(|s| s.0 == "gemv.cu"))
        .ok_or_else(|| Error::Runtime("kernels/gemv.cu is not embedded".into()))?;
    let bytes = load_one(nv, name, src, arch, &opts)?.bytes;
    if let Ok(mut m) = memo.lock() {
        m.insert(key, bytes.clone());
    }
    Ok(bytes)
}

/// [`load_gemv_variant`] for every build of `vs` at once, one thread each (NVRTC takes
/// seconds per build, and its calls on separate programs may run concurrently), in order.
pub fn load_gemv_variants(nv: &Nvrtc, arch: &str, vs: &[GemvVariant]) -> Vec<Result<Vec<u8>>> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = (vs.iter())
            .map(|&v| s.spawn(move || load_gemv_variant(nv, arch, v)))
            .collect();
        (jobs.into_iter())
            .map(|j| {
                (j.join()).unwrap_or_else(|_| Err(Error::Runtime("NVRTC thread panicked".into())))
            })
            .collect()
    })
}

/// The NVRTC target for compute capability `major.minor`: `sm_90a` on Hopper (the
/// arch-specific variant), `sm_XY` elsewhere.
pub fn arch_name(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// NVRTC options for `arch` (e.g. `sm_90a`). Precise division and square root stay on (the
/// defaults): the FP8 activation scales must match the CPU reference's IEEE arithmetic.
pub fn options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
    ];
    if let Some(inc) = std::env::var_os("QFORGE_CUDA_INCLUDE") {
        o.push(format!("-I{}", inc.to_string_lossy()));
    }
    o
}

/// The cache key of one source: its text and headers, the arch, the options and NVRTC's
/// version.
pub fn cache_key(nv: &Nvrtc, name: &str, src: &str, arch: &str, opts: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(format!("nvrtc {}.{}\n{arch}\n", nv.version.0, nv.version.1));
    for o in opts {
        h.update(o.as_bytes());
        h.update(b"\n");
    }
    for (n, t) in HEADERS {
        h.update(n.as_bytes());
        h.update(t.as_bytes());
    }
    h.update(name.as_bytes());
    h.update(src.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..24].to_string()
}

/// `$QFORGE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/qforge/kernels`, else
/// `~/.cache/qforge/kernels`, else a folder under the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QFORGE_KERNEL_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("qforge").join("kernels")
}

/// A compiled source and whether it came from the cache.
pub struct Cubin {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub cached: bool,
}

/// The cubin of every source for `arch`, from the cache or compiled (and then cached; a cache
/// that cannot be written only costs the next start a recompile). NVRTC warnings are
/// errors: the kernels must compile clean.
pub fn load_all(nv: &Nvrtc, arch: &str) -> Result<Vec<Cubin>> {
    let opts = options(arch);
    SOURCES
        .iter()
        .map(|&(name, src)| load_one(nv, name, src, arch, &opts))
        .collect()
}

/// One source's cubin built with `opts`, from the cache or compiled (and then cached).
fn load_one(
    nv: &Nvrtc,
    name: &'static str,
    src: &str,
    arch: &str,
    opts: &[String],
) -> Result<Cubin> {
    let dir = cache_dir();
    let key = cache_key(nv, name, src, arch, opts);
    let path = dir.join(format!(
        "{}-{arch}-{key}.cubin",
        name.trim_end_matches(".cu")
    ));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(Cubin {
            name,
            bytes,
            cached: true,
        });
    }
    let bytes = compile_clean(nv, name, src, opts)?;
    let _ = store(&dir, &path, &bytes);
    Ok(Cubin {
        name,
        bytes,
        cached: false,
    })
}

/// Compiles one source and fails on any NVRTC message (error or warning).
pub fn compile_clean(nv: &Nvrtc, name: &str, src: &str, opts: &[String]) -> Result<Vec<u8>> {
    let c = nv.compile(name, src, HEADERS, opts)?;
    if !c.log.is_empty() {
        return Err(Error::Runtime(format!(
            "kernels/{name}: NVRTC {}.{} warnings ({}):\n{}",
            nv.version.0,
            nv.version.1,
            opts.join(" "),
            c.log
        )));
    }
    if c.cubin.is_empty() {
        return Err(Error::Runtime(format!(
            "kernels/{name}: NVRTC returned an empty cubin"
        )));
    }
    Ok(c.cubin)
}

fn store(dir: &std::path::Path, path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
