//! NVRTC, loaded at run time by path ([`super::libs`]), compiling qforge's kernels straight to
//! a cubin for the GPU's exact architecture (no PTX JIT, so NVRTC may be newer than the
//! driver's JIT). Only the handful of entry points qforge uses are bound.

use super::libs::{self, LibSpec};
use crate::{Error, Result};
use libloading::os::unix::Library;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type Prog = *mut c_void;
type Status = c_int;

/// Where NVRTC is looked for, and what to install when it is missing.
pub const NVRTC: LibSpec = LibSpec {
    what: "NVRTC (libnvrtc.so)",
    env_path: "QFORGE_NVRTC_LIB",
    env_dir: "QFORGE_NVRTC_DIR",
    names: &["libnvrtc.so.13", "libnvrtc.so", "libnvrtc.so.12"],
    wheel_dirs: &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
    hint: "install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc==13.0.88` \
           (see scripts/install_nvrtc.sh)",
};

/// The bound NVRTC entry points.
pub struct Nvrtc {
    pub path: PathBuf,
    /// (major, minor) from `nvrtcVersion`.
    pub version: (i32, i32),
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Prog,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Prog) -> Status,
    num_archs: unsafe extern "C" fn(*mut c_int) -> Status,
    archs: unsafe extern "C" fn(*mut c_int) -> Status,
    // Keep the libraries loaded for as long as the function pointers live.
    _builtins: Option<Library>,
    _lib: Library,
}

/// A compiled program: the cubin and NVRTC's log (warnings; empty when clean).
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

fn sym<T: Copy>(lib: &Library, path: &Path, name: &str) -> Result<T> {
    // SAFETY: `T` is the documented C signature of `name` in NVRTC's public header.
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|e| Error::Runtime(format!("{}: missing symbol {name}: {e}", path.display())))
}

/// The process-wide NVRTC, loaded on first use.
pub fn get() -> Result<&'static Nvrtc> {
    static CELL: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    CELL.get_or_init(|| Nvrtc::find().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Runtime(e.clone()))
}

impl Nvrtc {
    /// Finds NVRTC ([`NVRTC`]'s search order) and binds it.
    pub fn find() -> Result<Nvrtc> {
        let opened = libs::find(&NVRTC)?;
        Nvrtc::bind(opened.lib, opened.path)
    }

    /// Binds the NVRTC library at `path`.
    pub fn open(path: &Path) -> Result<Nvrtc> {
        let lib = libs::open(path)
            .map_err(|e| Error::Runtime(format!("NVRTC at {}: {e}", path.display())))?;
        Nvrtc::bind(lib, path.to_path_buf())
    }

    fn bind(lib: Library, path: PathBuf) -> Result<Nvrtc> {
        let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status =
            sym(&lib, &path, "nvrtcVersion")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { version_fn(&mut major, &mut minor) };
        let nv = Nvrtc {
            version: (major, minor),
            get_error_string: sym(&lib, &path, "nvrtcGetErrorString")?,
            create: sym(&lib, &path, "nvrtcCreateProgram")?,
            compile: sym(&lib, &path, "nvrtcCompileProgram")?,
            log_size: sym(&lib, &path, "nvrtcGetProgramLogSize")?,
            log: sym(&lib, &path, "nvrtcGetProgramLog")?,
            cubin_size: sym(&lib, &path, "nvrtcGetCUBINSize")?,
            cubin: sym(&lib, &path, "nvrtcGetCUBIN")?,
            destroy: sym(&lib, &path, "nvrtcDestroyProgram")?,
            num_archs: sym(&lib, &path, "nvrtcGetNumSupportedArchs")?,
            archs: sym(&lib, &path, "nvrtcGetSupportedArchs")?,
            _builtins: preload_builtins(&path),
            path,
            _lib: lib,
        };
        Ok(nv)
    }

    /// The `sm_XY` numbers (e.g. 89, 90) this NVRTC can compile for.
    pub fn supported_archs(&self) -> Vec<i32> {
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer, then a buffer of the size NVRTC reported.
        unsafe {
            if (self.num_archs)(&mut n) != 0 || n <= 0 {
                return Vec::new();
            }
            let mut v = vec![0 as c_int; n as usize];
            if (self.archs)(v.as_mut_ptr()) != 0 {
                return Vec::new();
            }
            v
        }
    }

    fn err(&self, what: &str, status: Status) -> Error {
        // SAFETY: nvrtcGetErrorString returns a static string for any status.
        let msg = unsafe { CStr::from_ptr((self.get_error_string)(status)) };
        Error::Runtime(format!("NVRTC {what}: {}", msg.to_string_lossy()))
    }

    /// Compiles `src` (named `name` in messages) with the in-memory `headers` (include name,
    /// text) and `options`. A compile error returns [`Error::Runtime`] with NVRTC's log.
    pub fn compile(
        &self,
        name: &str,
        src: &str,
        headers: &[(&str, &str)],
        options: &[String],
    ) -> Result<Compiled> {
        let cstr = |s: &str| {
            CString::new(s).map_err(|_| Error::Runtime(format!("{name}: NUL byte in source")))
        };
        let (c_src, c_name) = (cstr(src)?, cstr(name)?);
        let h_text: Vec<CString> = headers.iter().map(|h| cstr(h.1)).collect::<Result<_>>()?;
        let h_name: Vec<CString> = headers.iter().map(|h| cstr(h.0)).collect::<Result<_>>()?;
        let c_opts: Vec<CString> = options.iter().map(|o| cstr(o)).collect::<Result<_>>()?;
        let p_text: Vec<*const c_char> = h_text.iter().map(|c| c.as_ptr()).collect();
        let p_name: Vec<*const c_char> = h_name.iter().map(|c| c.as_ptr()).collect();
        let p_opts: Vec<*const c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live NUL-terminated string; counts match.
        let st = unsafe {
            (self.create)(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                headers.len() as c_int,
                p_text.as_ptr(),
                p_name.as_ptr(),
            )
        };
        if st != 0 {
            return Err(self.err(&format!("create program {name}"), st));
        }
        // SAFETY: `prog` was created above and is destroyed exactly once below.
        let res = unsafe { self.compile_prog(prog, name, &p_opts) };
        unsafe { (self.destroy)(&mut prog) };
        res
    }

    /// # Safety
    /// `prog` must be a live program.
    unsafe fn compile_prog(
        &self,
        prog: Prog,
        name: &str,
        opts: &[*const c_char],
    ) -> Result<Compiled> {
        let st = (self.compile)(prog, opts.len() as c_int, opts.as_ptr());
        let log = self.read(prog, self.log_size, self.log)?;
        let log = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .trim()
            .to_string();
        if st != 0 {
            let e = self.err(&format!("compiling {name}"), st);
            return Err(Error::Runtime(format!("{e}:\n{log}")));
        }
        let cubin = self.read(prog, self.cubin_size, self.cubin)?;
        Ok(Compiled { cubin, log })
    }

    /// # Safety
    /// `prog` must be a live, compiled program; `size`/`get` a matching pair of NVRTC getters.
    unsafe fn read(
        &self,
        prog: Prog,
        size: unsafe extern "C" fn(Prog, *mut usize) -> Status,
        get: unsafe extern "C" fn(Prog, *mut c_char) -> Status,
    ) -> Result<Vec<u8>> {
        let mut n = 0usize;
        let st = size(prog, &mut n);
        if st != 0 {
            return Err(self.err("output size", st));
        }
        let mut buf = vec![0u8; n];
        let st = get(prog, buf.as_mut_ptr() as *mut c_char);
        if st != 0 {
            return Err(self.err("output", st));
        }
        Ok(buf)
    }
}

/// NVRTC dlopens `libnvrtc-builtins.so.X.Y` by soname at compile time, found only through
/// LD_LIBRARY_PATH; loading it globally from NVRTC's own folder first makes that lookup
/// succeed wherever NVRTC was found.
fn preload_builtins(nvrtc: &Path) -> Option<Library> {
    let dir = nvrtc.parent()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .collect();
    found.sort(); // the shortest name (the one NVRTC asks for) first
    found.iter().find_map(|p| libs::open(p).ok())
}
