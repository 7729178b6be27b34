//! The CUDA emulator: the very kernels of `kernels/*.cu`, compiled by the host C++ compiler
//! together with `kernels/emu/` (fibers for CUDA threads, warp shuffles and tensor-core `mma`
//! from the PTX fragment layouts, guard pages after every allocation) and run on the CPU.
//!
//! With `QFORGE_CUDA_EMULATE=1` every [`super::gpu::Gpu`] is an emulated one, so the whole
//! CUDA backend — host code, launch parameters and kernels — runs, slowly, on machines
//! without a GPU (CI), and is checked against the CPU reference there. cuBLASLt is not
//! emulated: every Linear takes the GEMV kernels. The library is compiled once per
//! (sources, compiler) and cached next to the NVRTC cubins.

use super::kernels::{cache_dir, HEADERS, SOURCES};
use crate::{Error, Result};
use libloading::os::unix::{Library, Symbol, RTLD_NOW};
use sha2::{Digest, Sha256};
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// The emulator's own sources, by file name.
const EMU_SOURCES: &[(&str, &str)] = &[
    ("emu.h", include_str!("../../../kernels/emu/emu.h")),
    ("emu.cpp", include_str!("../../../kernels/emu/emu.cpp")),
];

const FLAGS: &[&str] = &[
    "-O2",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-pthread",
    // GPU float semantics: no contraction into FMA, no fast-math; plain aliasing of buffers.
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-DQFORGE_EMU",
    "-Wall",
    "-Wno-unknown-pragmas",
];

/// True when `QFORGE_CUDA_EMULATE` asks for the emulator (set and not `0`).
pub fn enabled() -> bool {
    std::env::var_os("QFORGE_CUDA_EMULATE").is_some_and(|v| !v.is_empty() && v != "0")
}

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    u32,
    *const u64,
    *const c_int,
    c_int,
    *mut c_char,
    c_int,
) -> c_int;

/// The loaded emulator library.
pub struct Emu {
    launch: LaunchFn,
    alloc: unsafe extern "C" fn(usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
    set_max_smem: unsafe extern "C" fn(*const c_char, u32) -> c_int,
    /// Worker threads running blocks.
    pub threads: usize,
    /// The compiler's `--version` line.
    pub compiler: String,
    /// Where the compiled library is.
    pub path: PathBuf,
    _lib: Library,
}

/// The process's emulator, compiled (or loaded from the cache) on first use.
pub fn get() -> Result<Arc<Emu>> {
    static EMU: OnceLock<std::result::Result<Arc<Emu>, String>> = OnceLock::new();
    EMU.get_or_init(|| {
        Emu::load(&[], &all_kernels())
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(Error::Runtime)
}

fn all_kernels() -> Vec<&'static str> {
    super::kernels::FUNCTIONS.iter().map(|k| k.name).collect()
}

/// An emulator built with `gemv.cu` as `v` (see [`super::kernels::GemvVariant`]), once per
/// process and variant: its GEMV kernels stand in for the default build's.
pub fn gemv_variant(v: super::kernels::GemvVariant) -> Result<Arc<Emu>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Builds = HashMap<super::kernels::GemvVariant, std::result::Result<Arc<Emu>, String>>;
    static BUILDS: OnceLock<Mutex<Builds>> = OnceLock::new();
    let mut builds = BUILDS.get_or_init(Default::default).lock().map_err(err)?;
    builds
        .entry(v)
        .or_insert_with(|| {
            Emu::load(&v.defines(), super::kernels::GEMV_VARIANT_KERNELS)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(Error::Runtime)
}

fn err(what: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("CUDA emulator: {what}"))
}

/// `$CXX`, else `c++`.
fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_string())
}

fn compiler_version(cxx: &str) -> Result<String> {
    let out = Command::new(cxx).arg("--version").output().map_err(|e| {
        err(format!(
            "no C++ compiler ({cxx}: {e}); install g++ or set CXX"
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// Every file the compile reads, by name.
fn all_sources() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    EMU_SOURCES.iter().chain(HEADERS).chain(SOURCES)
}

impl Emu {
    /// The library built with `FLAGS` and `extra` flags, which must have kernels `names`.
    fn load(extra: &[String], names: &[&str]) -> Result<Emu> {
        if !cfg!(target_arch = "x86_64") {
            return Err(err("written for x86-64 hosts only"));
        }
        let cxx = compiler();
        let version = compiler_version(&cxx)?;
        let mut h = Sha256::new();
        h.update(format!(
            "{version}\n{}\n{}\n",
            FLAGS.join(" "),
            extra.join(" ")
        ));
        for (name, text) in all_sources() {
            h.update(name.as_bytes());
            h.update(text.as_bytes());
        }
        let key: String = h.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = cache_dir();
        let path = dir.join(format!("emu-{key}.so"));
        if !path.exists() {
            build(&cxx, extra, &dir, &path)?;
        }
        Emu::open(&path, version, names)
    }

    fn open(path: &Path, compiler: String, names: &[&str]) -> Result<Emu> {
        // SAFETY: our own library, built from kernels/emu; its initialisers are trivial.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW) }
            .map_err(|e| err(format!("loading {}: {e}", path.display())))?;
        // SAFETY: the C signatures of kernels/emu/emu.cpp's `extern "C"` functions.
        unsafe {
            let init: Symbol<unsafe extern "C" fn() -> c_int> = sym(&lib, "qf_emu_init")?;
            let has: Symbol<unsafe extern "C" fn(*const c_char) -> c_int> =
                sym(&lib, "qf_emu_has")?;
            for &name in names {
                let c = CString::new(name).map_err(err)?;
                if has(c.as_ptr()) == 0 {
                    return Err(err(format!(
                        "kernel {name} missing from kernels/emu/emu.cpp"
                    )));
                }
            }
            Ok(Emu {
                launch: *sym(&lib, "qf_emu_launch")?,
                alloc: *sym(&lib, "qf_emu_alloc")?,
                free: *sym(&lib, "qf_emu_free")?,
                set_max_smem: *sym(&lib, "qf_emu_set_max_smem")?,
                threads: init() as usize,
                compiler,
                path: path.to_path_buf(),
                _lib: lib,
            })
        }
    }

    /// A zeroed host allocation of `bytes` bytes that ends at a guard page.
    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        // SAFETY: plain allocation.
        let p = unsafe { (self.alloc)(bytes.max(1)) };
        if p.is_null() {
            return Err(err(format!("cannot allocate {} MiB", bytes >> 20)));
        }
        Ok(p as u64)
    }

    /// Frees an address returned by [`Emu::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc` and is not used afterwards.
    pub unsafe fn free(&self, ptr: u64) {
        (self.free)(ptr as *mut c_void)
    }

    /// Raises kernel `name`'s dynamic shared memory limit (as the driver attribute).
    pub fn set_max_smem(&self, name: &str, bytes: usize) -> Result<()> {
        let c = CString::new(name).map_err(err)?;
        // SAFETY: valid C string.
        match unsafe { (self.set_max_smem)(c.as_ptr(), bytes as u32) } {
            0 => Ok(()),
            _ => Err(err(format!(
                "{name}: shared memory {bytes} bytes not allowed"
            ))),
        }
    }

    /// Runs kernel `name` to completion; `args` are (kind, 8-byte slot) pairs with the kinds
    /// of `gpu::Arg` (0 u64/pointer, 1 i32, 2 u32, 3 f32).
    pub fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        smem: u32,
        args: &[(i32, u64)],
    ) -> Result<()> {
        let c = CString::new(name).map_err(err)?;
        let kinds: Vec<c_int> = args.iter().map(|a| a.0).collect();
        let slots: Vec<u64> = args.iter().map(|a| a.1).collect();
        let mut msg = vec![0u8; 512];
        // SAFETY: the argument arrays have `args.len()` entries; pointers inside the slots are
        // emulator allocations (the same contract as a real launch).
        let rc = unsafe {
            (self.launch)(
                c.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                smem,
                slots.as_ptr(),
                kinds.as_ptr(),
                args.len() as c_int,
                msg.as_mut_ptr() as *mut c_char,
                msg.len() as c_int,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
        Err(err(String::from_utf8_lossy(&msg[..end])))
    }
}

/// # Safety
/// `T` must be the C type of symbol `name`.
unsafe fn sym<T>(lib: &Library, name: &str) -> Result<Symbol<T>> {
    lib.get(name.as_bytes())
        .map_err(|e| err(format!("symbol {name}: {e}")))
}

/// Writes the sources into a scratch folder and compiles them into `out` (atomically: a
/// failed or concurrent build never leaves a half-written library under the final name).
fn build(cxx: &str, extra: &[String], dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let src = tempfile::tempdir_in(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    for (name, text) in all_sources() {
        std::fs::write(src.path().join(name), text).map_err(err)?;
    }
    let tmp = src.path().join("emu.so");
    let res = Command::new(cxx)
        .args(FLAGS)
        .args(extra)
        .arg("-o")
        .arg(&tmp)
        .arg(src.path().join("emu.cpp"))
        .output()
        .map_err(|e| err(format!("running {cxx}: {e}")))?;
    if !res.status.success() {
        let log = String::from_utf8_lossy(&res.stderr);
        let head: Vec<&str> = log.lines().take(20).collect();
        return Err(err(format!(
            "compiling kernels/emu with {cxx} failed:\n{}",
            head.join("\n")
        )));
    }
    std::fs::rename(&tmp, out).map_err(|e| err(format!("{}: {e}", out.display())))
}
