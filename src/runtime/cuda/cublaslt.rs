//! cuBLASLt, loaded at run time by path, for the prefill GEMMs (M > 16 activation rows).
//!
//! Three products, all `D[M, N] = X[M, K] · W[N, K]ᵀ` with row-major X, W, D — in cuBLASLt's
//! column-major terms `Dᵀ = op(W)ᵀ · Xᵀ`, the "TN" layout FP8 requires:
//! * [`Kind::Fp8Scaled`]: FP8 X and W with the per-token × per-channel scales applied by
//!   cuBLASLt's outer-vector scaling (`CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F`, cuBLASLt
//!   ≥ 12.9, Hopper+), BF16 out: `D = bf16(s_a · s_w · acc)`.
//! * [`Kind::Fp8Raw`]: FP8 X and W, unit scales, f32 sums out (the caller applies vLLM's
//!   epilogue `bf16(s_a · (s_w · acc))` in a kernel). The fallback where outer-vector scaling
//!   is not available.
//! * [`Kind::Bf16`]: BF16 X and W, BF16 or f32 out (dense Linears, lm_head).
//!
//! Only the entry points used are bound; enum values are cuBLASLt's public ABI (`cublasLt.h`).

use super::libs::{self, LibSpec};
use crate::{Error, Result};
use libloading::os::unix::Library;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;

type Handle = *mut c_void;
type Status = c_int;

/// Where cuBLASLt is looked for.
pub const CUBLASLT: LibSpec = LibSpec {
    what: "cuBLASLt (libcublasLt.so)",
    env_path: "QFORGE_CUBLASLT_LIB",
    env_dir: "QFORGE_CUBLASLT_DIR",
    names: &["libcublasLt.so.13", "libcublasLt.so", "libcublasLt.so.12"],
    wheel_dirs: &["nvidia/cu13/lib", "nvidia/cublas/lib"],
    hint: "install the CUDA toolkit or `pip install nvidia-cublas`; without it prefill \
           runs on qforge's GEMV kernels (much slower)",
};

// cudaDataType_t, cublasComputeType_t, cublasOperation_t.
const R_32F: c_int = 0;
const R_16BF: c_int = 14;
const R_8F_E4M3: c_int = 28;
const COMPUTE_32F: c_int = 68;
const OP_N: c_int = 0;
const OP_T: c_int = 1;
// cublasLtMatmulDescAttributes_t.
const DESC_TRANSA: c_int = 3;
const DESC_TRANSB: c_int = 4;
const DESC_A_SCALE_POINTER: c_int = 17;
const DESC_B_SCALE_POINTER: c_int = 18;
const DESC_A_SCALE_MODE: c_int = 31;
const DESC_B_SCALE_MODE: c_int = 32;
const SCALE_OUTER_VEC_32F: c_int = 3;
const PREF_MAX_WORKSPACE_BYTES: c_int = 1;

/// `cublasLtMatmulHeuristicResult_t`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Heuristic {
    algo: [u64; 8],
    workspace_size: usize,
    state: Status,
    waves_count: f32,
    reserved: [c_int; 4],
}

/// Which product (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Fp8Scaled,
    Fp8Raw,
    Bf16 { f32_out: bool },
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct Key {
    kind: Kind,
    m: usize,
    n: usize,
    k: usize,
}

/// A prepared matmul: descriptors and the chosen algorithm.
struct Plan {
    desc: Handle,
    layouts: [Handle; 3], // W (A), X (B), D (C = D)
    algo: Heuristic,
}

struct Fns {
    create: unsafe extern "C" fn(*mut Handle) -> Status,
    destroy: unsafe extern "C" fn(Handle) -> Status,
    version: unsafe extern "C" fn() -> usize,
    status_string: Option<unsafe extern "C" fn(Status) -> *const c_char>,
    desc_create: unsafe extern "C" fn(*mut Handle, c_int, c_int) -> Status,
    desc_destroy: unsafe extern "C" fn(Handle) -> Status,
    desc_set: unsafe extern "C" fn(Handle, c_int, *const c_void, usize) -> Status,
    layout_create: unsafe extern "C" fn(*mut Handle, c_int, u64, u64, i64) -> Status,
    layout_destroy: unsafe extern "C" fn(Handle) -> Status,
    pref_create: unsafe extern "C" fn(*mut Handle) -> Status,
    pref_destroy: unsafe extern "C" fn(Handle) -> Status,
    pref_set: unsafe extern "C" fn(Handle, c_int, *const c_void, usize) -> Status,
    #[allow(clippy::type_complexity)]
    heuristic: unsafe extern "C" fn(
        Handle,
        Handle,
        Handle,
        Handle,
        Handle,
        Handle,
        Handle,
        c_int,
        *mut Heuristic,
        *mut c_int,
    ) -> Status,
    #[allow(clippy::type_complexity)]
    matmul: unsafe extern "C" fn(
        Handle,
        Handle,
        *const c_void,
        *const c_void,
        Handle,
        *const c_void,
        Handle,
        *const c_void,
        *const c_void,
        Handle,
        *mut c_void,
        Handle,
        *const c_void,
        *mut c_void,
        usize,
        *mut c_void,
    ) -> Status,
}

/// cuBLASLt, or its host stand-in on the CUDA emulator ([`super::emu_cublaslt`]).
pub enum Blas {
    Lt(Box<Lt>),
    Host,
}

impl Blas {
    /// Finds and opens cuBLASLt ([`Lt::new`]).
    pub fn new(workspace: u64, workspace_size: usize) -> Result<Blas> {
        Lt::new(workspace, workspace_size).map(|l| Blas::Lt(Box::new(l)))
    }

    /// Which library, for messages.
    pub fn describe(&self) -> String {
        match self {
            Blas::Lt(l) => format!("cuBLASLt {} ({})", l.version, l.path.display()),
            Blas::Host => "cuBLASLt emulated on the host".into(),
        }
    }

    /// [`Lt::matmul`] (the emulator: the same product computed on the host).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        kind: Kind,
        shape: (usize, usize, usize),
        w: u64,
        x: u64,
        d: u64,
        sa: u64,
        sw: u64,
        g: &super::gpu::Gpu,
    ) -> Result<()> {
        match self {
            Blas::Lt(l) => l.matmul(kind, shape, w, x, d, sa, sw, g),
            // SAFETY: emulator buffers are host memory of the sizes `kind` and the shape imply
            // (the caller's contract, as for cuBLASLt).
            Blas::Host => unsafe { super::emu_cublaslt::matmul(kind, shape, w, x, d, sa, sw) },
        }
    }
}

/// A cuBLASLt handle with its workspace and the plans made so far.
pub struct Lt {
    pub path: PathBuf,
    /// `cublasLtGetVersion()`, e.g. 130000.
    pub version: usize,
    fns: Fns,
    handle: Handle,
    pref: Handle,
    workspace: u64,
    workspace_size: usize,
    plans: HashMap<Key, Plan>,
    _lib: Library,
}

fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T> {
    // SAFETY: `T` is the C signature of `name` in cublasLt.h.
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|e| Error::Runtime(format!("cuBLASLt: missing symbol {name}: {e}")))
}

impl Lt {
    /// Finds and opens cuBLASLt and creates a handle. `workspace` is a device buffer of
    /// `workspace_size` bytes that outlives the `Blas` (owned by the caller). The CUDA
    /// context must be current on this thread.
    pub fn new(workspace: u64, workspace_size: usize) -> Result<Lt> {
        let opened = libs::find(&CUBLASLT)?;
        let lib = opened.lib;
        let fns = Fns {
            create: sym(&lib, "cublasLtCreate")?,
            destroy: sym(&lib, "cublasLtDestroy")?,
            version: sym(&lib, "cublasLtGetVersion")?,
            status_string: sym(&lib, "cublasLtGetStatusString").ok(),
            desc_create: sym(&lib, "cublasLtMatmulDescCreate")?,
            desc_destroy: sym(&lib, "cublasLtMatmulDescDestroy")?,
            desc_set: sym(&lib, "cublasLtMatmulDescSetAttribute")?,
            layout_create: sym(&lib, "cublasLtMatrixLayoutCreate")?,
            layout_destroy: sym(&lib, "cublasLtMatrixLayoutDestroy")?,
            pref_create: sym(&lib, "cublasLtMatmulPreferenceCreate")?,
            pref_destroy: sym(&lib, "cublasLtMatmulPreferenceDestroy")?,
            pref_set: sym(&lib, "cublasLtMatmulPreferenceSetAttribute")?,
            heuristic: sym(&lib, "cublasLtMatmulAlgoGetHeuristic")?,
            matmul: sym(&lib, "cublasLtMatmul")?,
        };
        let mut handle: Handle = std::ptr::null_mut();
        let mut pref: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointers; the size attribute is a u64 as documented.
        let version = unsafe {
            check(&fns, "cublasLtCreate", (fns.create)(&mut handle))?;
            check(&fns, "preference", (fns.pref_create)(&mut pref))?;
            let ws = workspace_size as u64;
            let st = (fns.pref_set)(pref, PREF_MAX_WORKSPACE_BYTES, &ws as *const u64 as _, 8);
            check(&fns, "preference workspace", st)?;
            (fns.version)()
        };
        Ok(Lt {
            path: opened.path,
            version,
            fns,
            handle,
            pref,
            workspace,
            workspace_size,
            plans: HashMap::new(),
            _lib: lib,
        })
    }

    /// Runs `kind` for D[m, n] = X[m, k] · W[n, k]ᵀ on `stream`. `sa` (m floats) and `sw`
    /// (n floats) are read by [`Kind::Fp8Scaled`] only. Plans are made on first use of a
    /// shape; an unsupported combination returns an error (the caller falls back).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        kind: Kind,
        (m, n, k): (usize, usize, usize),
        w: u64,
        x: u64,
        d: u64,
        sa: u64,
        sw: u64,
        g: &super::gpu::Gpu,
    ) -> Result<()> {
        let stream = g.raw_stream()?;
        let key = Key { kind, m, n, k };
        if !self.plans.contains_key(&key) {
            let plan = self.plan(key)?;
            self.plans.insert(key, plan);
        }
        let p = &self.plans[&key];
        let f = &self.fns;
        let (one, zero) = (1.0f32, 0.0f32);
        // SAFETY: the plan's descriptors match the buffers' shapes and types (the caller
        // passes device pointers of the sizes `kind` and the shape imply); the scale pointers
        // are set per call on the plan's own descriptor.
        unsafe {
            if kind == Kind::Fp8Scaled {
                let set = |attr, ptr: &u64| (f.desc_set)(p.desc, attr, ptr as *const u64 as _, 8);
                check(f, "A scale pointer", set(DESC_A_SCALE_POINTER, &sw))?;
                check(f, "B scale pointer", set(DESC_B_SCALE_POINTER, &sa))?;
            }
            let st = (f.matmul)(
                self.handle,
                p.desc,
                &one as *const f32 as _,
                w as *const c_void,
                p.layouts[0],
                x as *const c_void,
                p.layouts[1],
                &zero as *const f32 as _,
                d as *const c_void,
                p.layouts[2],
                d as *mut c_void,
                p.layouts[2],
                p.algo.algo.as_ptr() as _,
                self.workspace as *mut c_void,
                self.workspace_size,
                stream,
            );
            check(f, &format!("matmul {kind:?} m={m} n={n} k={k}"), st)
        }
    }

    fn plan(&self, key: Key) -> Result<Plan> {
        let f = &self.fns;
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        let (in_t, out_t) = match key.kind {
            Kind::Fp8Scaled => (R_8F_E4M3, R_16BF),
            Kind::Fp8Raw => (R_8F_E4M3, R_32F),
            Kind::Bf16 { f32_out } => (R_16BF, if f32_out { R_32F } else { R_16BF }),
        };
        let mut p = Plan {
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            algo: Heuristic {
                algo: [0; 8],
                workspace_size: 0,
                state: 0,
                waves_count: 0.0,
                reserved: [0; 4],
            },
        };
        // SAFETY: out-pointers are valid; attribute buffers have the documented sizes
        // (cublasOperation_t and the scale mode are 32-bit enums). On error the partly
        // built plan is destroyed by `drop_plan`.
        let res = unsafe {
            (|| -> Result<()> {
                check(f, "desc", (f.desc_create)(&mut p.desc, COMPUTE_32F, R_32F))?;
                let set = |attr, v: c_int| (f.desc_set)(p.desc, attr, &v as *const c_int as _, 4);
                check(f, "transa", set(DESC_TRANSA, OP_T))?;
                check(f, "transb", set(DESC_TRANSB, OP_N))?;
                if key.kind == Kind::Fp8Scaled {
                    check(
                        f,
                        "A scale mode",
                        set(DESC_A_SCALE_MODE, SCALE_OUTER_VEC_32F),
                    )?;
                    check(
                        f,
                        "B scale mode",
                        set(DESC_B_SCALE_MODE, SCALE_OUTER_VEC_32F),
                    )?;
                }
                // Column-major: W is K×N (ld K), X is K×M (ld K), D is N×M (ld N).
                check(
                    f,
                    "layout W",
                    (f.layout_create)(&mut p.layouts[0], in_t, k, n, k as i64),
                )?;
                check(
                    f,
                    "layout X",
                    (f.layout_create)(&mut p.layouts[1], in_t, k, m, k as i64),
                )?;
                check(
                    f,
                    "layout D",
                    (f.layout_create)(&mut p.layouts[2], out_t, n, m, n as i64),
                )?;
                let mut count: c_int = 0;
                let st = (f.heuristic)(
                    self.handle,
                    p.desc,
                    p.layouts[0],
                    p.layouts[1],
                    p.layouts[2],
                    p.layouts[2],
                    self.pref,
                    1,
                    &mut p.algo,
                    &mut count,
                );
                check(f, "algorithm heuristic", st)?;
                if count < 1 {
                    return Err(Error::Runtime(format!(
                        "cuBLASLt {}: no algorithm for {:?} m={m} n={n} k={k}",
                        self.version, key.kind
                    )));
                }
                Ok(())
            })()
        };
        match res {
            Ok(()) => Ok(p),
            Err(e) => {
                self.drop_plan(&p);
                Err(e)
            }
        }
    }

    fn drop_plan(&self, p: &Plan) {
        let f = &self.fns;
        // SAFETY: each handle is null or was created by the matching create call.
        unsafe {
            for l in p.layouts.iter().filter(|l| !l.is_null()) {
                (f.layout_destroy)(*l);
            }
            if !p.desc.is_null() {
                (f.desc_destroy)(p.desc);
            }
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        for p in self.plans.values() {
            self.drop_plan(p);
        }
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            (self.fns.pref_destroy)(self.pref);
            (self.fns.destroy)(self.handle);
        }
    }
}

fn check(f: &Fns, what: &str, st: Status) -> Result<()> {
    if st == 0 {
        return Ok(());
    }
    let name = f
        .status_string
        // SAFETY: returns a static string for any status.
        .map(|s| {
            unsafe { CStr::from_ptr(s(st)) }
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_else(|| format!("status {st}"));
    Err(Error::Runtime(format!("cuBLASLt {what}: {name}")))
}
