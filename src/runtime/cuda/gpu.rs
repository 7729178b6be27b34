//! The GPU: driver checks, context and stream, the compiled kernels, device buffers and
//! kernel launches. All CUDA work of the backend goes through one stream, so ordering is
//! the stream's and cudarc's per-buffer event tracking is switched off.
//!
//! A `Gpu` is either a real device or the CUDA emulator ([`super::emu`], chosen with
//! `QFORGE_CUDA_EMULATE=1`): the same kernels and host code, run on the CPU.

use super::graph::{Capture, Recorded};
use super::variant::{BuildDev, GemvBuild};
use super::{emu, kernels, nvrtc};
use crate::{Error, Result};
use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{
    result as cu, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What the driver says about a GPU (no NVRTC needed).
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// NVRTC target, e.g. `sm_90a`.
    pub arch: String,
    pub total_mem: usize,
    pub sm_count: i32,
    /// Peak memory bandwidth in GB/s from the memory clock and bus width, when the driver
    /// reports them.
    pub peak_bw_gbps: Option<f64>,
    /// CUDA driver version, e.g. 13000.
    pub driver_version: i32,
}

pub(super) fn drv(what: &str, e: cu::DriverError) -> Error {
    Error::Runtime(format!("CUDA {what}: {e:?}"))
}

/// True when the CUDA driver library (libcuda.so) can be loaded. Every other driver call
/// panics without it, so this comes first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The GPU at `ordinal`, or why there is none: no driver, no device, or a GPU without FP8
/// (compute capability below 8.9).
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    if emu::enabled() {
        return Ok(emulated_info(ordinal));
    }
    open(ordinal).map(|(info, _)| info)
}

/// [`probe`] on a real GPU, with the context it opened: [`Gpu::new`] keeps it, as dropping
/// the last reference to the primary context destroys it (and the next one costs a new).
fn open(ordinal: usize) -> Result<(DeviceInfo, Arc<CudaContext>)> {
    if !driver_present() {
        return Err(Error::Runtime(
            "no CUDA driver (libcuda.so.1 not found): install the NVIDIA driver".into(),
        ));
    }
    cu::init().map_err(|e| drv("init", e))?;
    let count = CudaContext::device_count().map_err(|e| drv("device count", e))?;
    if count <= ordinal as i32 {
        return Err(Error::Runtime(format!(
            "no CUDA device {ordinal} ({count} device(s) visible)"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| drv("context", e))?;
    Ok((info_of(&ctx, ordinal)?, ctx))
}

fn info_of(ctx: &Arc<CudaContext>, ordinal: usize) -> Result<DeviceInfo> {
    let name = ctx.name().map_err(|e| drv("device name", e))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| drv("compute capability", e))?;
    if cc < (8, 9) {
        return Err(Error::Unsupported(format!(
            "{name}: FP8 needs compute capability >= 8.9 (Ada or Hopper); this GPU is {}.{}",
            cc.0, cc.1
        )));
    }
    let attr = |a| ctx.attribute(a).unwrap_or(0);
    let clock_khz = attr(Attr::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE) as f64;
    let bus_bits = attr(Attr::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH) as f64;
    let peak = 2.0 * clock_khz * 1e3 * bus_bits / 8.0 / 1e9;
    let mut driver_version = 0;
    // SAFETY: valid out-pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
    Ok(DeviceInfo {
        ordinal,
        arch: kernels::arch_name(cc.0, cc.1),
        total_mem: ctx.total_mem().map_err(|e| drv("memory size", e))?,
        sm_count: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        peak_bw_gbps: (peak > 0.0).then_some(peak),
        driver_version,
        name,
        cc,
    })
}

/// What the emulator reports as its device (an sm_90a-like GPU without cuBLASLt).
fn emulated_info(ordinal: usize) -> DeviceInfo {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    DeviceInfo {
        ordinal,
        name: format!("qforge CUDA emulator ({threads} host threads)"),
        cc: (9, 0),
        arch: "sm_90a (emulated)".into(),
        total_mem: 0,
        sm_count: threads as i32,
        peak_bw_gbps: None,
        driver_version: 0,
    }
}

/// One kernel argument (all kernels take device pointers, ints and floats).
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A device pointer (0 = null) or a 64-bit count.
    U64(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

impl Arg {
    /// The (kind, 8-byte slot) form: the emulator's, and programmatic launches' values.
    pub(super) fn slot(self) -> (i32, u64) {
        match self {
            Arg::U64(v) => (0, v),
            Arg::I32(v) => (1, v as u32 as u64),
            Arg::U32(v) => (2, v as u64),
            Arg::F32(v) => (3, v.to_bits() as u64),
        }
    }
}

/// Who frees a [`DBuf`].
enum Owner {
    Cuda(Arc<CudaContext>),
    Emu(Arc<emu::Emu>),
}

/// An owned device allocation (raw, so kernels and cuBLASLt take plain pointers).
pub struct DBuf {
    pub ptr: u64,
    pub bytes: usize,
    owner: Owner,
}

impl DBuf {
    /// The address `off` bytes in.
    pub fn at(&self, off: usize) -> u64 {
        debug_assert!(off <= self.bytes);
        self.ptr + off as u64
    }
}

impl Drop for DBuf {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Cuda(ctx) if self.ptr != 0 && ctx.bind_to_thread().is_ok() => {
                // SAFETY: allocated by `Gpu::alloc` in this context, freed once.
                let _ = unsafe { cu::free_sync(self.ptr) };
            }
            // SAFETY: allocated by `Gpu::alloc` on this emulator, freed once.
            Owner::Emu(e) => unsafe { e.free(self.ptr) },
            Owner::Cuda(_) => {}
        }
    }
}

/// A real device's context, stream and loaded kernels.
pub(super) struct Cuda {
    pub(super) ctx: Arc<CudaContext>,
    /// The legacy default stream: all work runs on it, graphs too.
    pub(super) stream: Arc<CudaStream>,
    /// The stream graphs are captured on (capture cannot start on the legacy stream).
    pub(super) side: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Kernels this GPU cannot run in their largest block, with the block it can run and
    /// their registers (see [`block_limit`]).
    short: HashMap<&'static str, (u32, i32)>,
}

pub(super) enum Dev {
    Cuda(Cuda),
    Emu(Arc<emu::Emu>),
}

/// A ready GPU: context, stream and loaded kernels (or the emulator).
pub struct Gpu {
    pub info: DeviceInfo,
    /// True when every kernel came from the on-disk cache; `compile_s` is the time spent
    /// compiling or loading them.
    pub kernels_cached: bool,
    pub compile_s: f64,
    pub(super) dev: Dev,
    /// Set between [`Gpu::begin_capture`] and [`Gpu::end_capture`] (see [`super::graph`]).
    pub(super) capture: RefCell<Option<Capture>>,
    /// Whether captured launches use programmatic dependent launch (see [`super::graph`]).
    pub(super) pdl: Cell<bool>,
    /// Which launches run (a diagnostic, see [`Gpu::only`]).
    filter: RefCell<Filter>,
    /// The GEMV build standing in for the default one (see [`Gpu::set_gemv`]).
    pub(super) gemv: RefCell<Option<GemvBuild>>,
}

/// Which kernel launches run: all (and their names recorded, or not), or one kernel's only.
#[derive(Debug, Default)]
enum Filter {
    #[default]
    All,
    Names(Vec<String>),
    Only(String),
}

fn on_emulator(what: &str) -> Error {
    Error::Unsupported(format!("{what} is not available on the CUDA emulator"))
}

impl Gpu {
    /// Opens GPU `ordinal` ([`probe`]'s checks) and loads every kernel (NVRTC + cache); the
    /// emulator instead when `QFORGE_CUDA_EMULATE` is set.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        if emu::enabled() {
            return Gpu::emulated();
        }
        let (info, ctx) = open(ordinal)?;
        // SAFETY: all work goes through one stream; no buffer is shared across streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let side = ctx.new_stream().map_err(|e| drv("stream", e))?;
        let t0 = Instant::now();
        let nv = nvrtc::get()?;
        let cubins = kernels::load_all(nv, &info.arch)?;
        let mut modules = HashMap::new();
        for c in &cubins {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(c.bytes.clone()))
                .map_err(|e| drv(&format!("loading kernels/{}", c.name), e))?;
            modules.insert(c.name, m);
        }
        let (mut funcs, mut short) = (HashMap::new(), HashMap::new());
        for k in kernels::FUNCTIONS {
            let f = modules[k.source]
                .load_function(k.name)
                .map_err(|e| drv(&format!("kernel {} in kernels/{}", k.name, k.source), e))?;
            if let Some(limit) = block_limit(k, &f)? {
                short.insert(k.name, limit);
            }
            funcs.insert(k.name, f);
        }
        Ok(Gpu {
            pdl: Cell::new(super::graph::pdl_default(info.cc)),
            kernels_cached: cubins.iter().all(|c| c.cached),
            compile_s: t0.elapsed().as_secs_f64(),
            info,
            dev: Dev::Cuda(Cuda {
                ctx,
                stream,
                side,
                funcs,
                short,
            }),
            capture: RefCell::new(None),
            filter: RefCell::default(),
            gemv: RefCell::new(None),
        })
    }

    /// The CUDA emulator (kernels compiled by the host C++ compiler, run on the CPU).
    pub fn emulated() -> Result<Gpu> {
        let t0 = Instant::now();
        let e = emu::get()?;
        Ok(Gpu {
            info: emulated_info(0),
            kernels_cached: true,
            compile_s: t0.elapsed().as_secs_f64(),
            dev: Dev::Emu(e),
            capture: RefCell::new(None),
            pdl: Cell::new(false),
            filter: RefCell::default(),
            gemv: RefCell::new(None),
        })
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.dev, Dev::Emu(_))
    }

    /// The CUDA context and stream (cuBLASLt, events); an error on the emulator.
    pub fn cuda(&self) -> Result<(&Arc<CudaContext>, &Arc<CudaStream>)> {
        match &self.dev {
            Dev::Cuda(c) => Ok((&c.ctx, &c.stream)),
            Dev::Emu(_) => Err(on_emulator("cuBLASLt / CUDA events")),
        }
    }

    /// Makes the context current on the calling thread (nothing to do on the emulator).
    pub fn bind(&self) -> Result<()> {
        match &self.dev {
            Dev::Cuda(c) => c.ctx.bind_to_thread().map_err(|e| drv("bind", e)),
            Dev::Emu(_) => Ok(()),
        }
    }

    /// A zeroed device buffer of `bytes` bytes (at least 1).
    pub fn alloc(&self, bytes: usize) -> Result<DBuf> {
        self.not_capturing("allocating GPU memory")?;
        let c = match &self.dev {
            Dev::Cuda(c) => c,
            Dev::Emu(e) => {
                return Ok(DBuf {
                    ptr: e.alloc(bytes)?,
                    bytes,
                    owner: Owner::Emu(e.clone()),
                })
            }
        };
        c.ctx.bind_to_thread().map_err(|e| drv("bind", e))?;
        let n = bytes.max(1);
        // SAFETY: plain allocation and memset of the new buffer.
        let ptr = unsafe {
            let p = cu::malloc_sync(n).map_err(|e| {
                let free = c.ctx.mem_get_info().map(|m| m.0 >> 20).unwrap_or(0);
                drv(&format!("allocating {} MiB ({free} MiB free)", n >> 20), e)
            })?;
            cu::memset_d8_sync(p, 0, n).map_err(|e| drv("memset", e))?;
            p
        };
        Ok(DBuf {
            ptr,
            bytes,
            owner: Owner::Cuda(c.ctx.clone()),
        })
    }

    /// Copies host bytes to device address `dst` (stream-ordered; `src` may be freed after).
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.not_capturing("a host-to-device copy")?;
        match &self.dev {
            // SAFETY: the caller passes an address with `src.len()` bytes of room.
            Dev::Cuda(c) => unsafe { cu::memcpy_htod_async(dst, src, c.stream.cu_stream()) }
                .map_err(|e| drv("host-to-device copy", e)),
            // SAFETY: as above; emulator buffers are host memory.
            Dev::Emu(_) => unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
                Ok(())
            },
        }
    }

    /// A device buffer holding `src`.
    pub fn upload_new(&self, src: &[u8]) -> Result<DBuf> {
        let b = self.alloc(src.len())?;
        self.upload(b.ptr, src)?;
        Ok(b)
    }

    /// Device-to-device copy of `bytes` bytes (stream-ordered).
    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        match &self.dev {
            Dev::Cuda(c) => {
                self.captured();
                // SAFETY: the caller passes two buffers with `bytes` bytes of room.
                unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.work_stream(c).cu_stream()) }
                    .map_err(|e| drv("device-to-device copy", e))
            }
            Dev::Emu(_) if self.record(|| Recorded::Copy { dst, src, bytes }) => Ok(()),
            // SAFETY: as above (host memory; `copy` allows overlap like cudaMemcpy does not).
            Dev::Emu(_) => unsafe {
                std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
                Ok(())
            },
        }
    }

    /// Copies `dst.len()` bytes from device address `src` once the stream reaches it.
    pub fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.not_capturing("a device-to-host copy")?;
        match &self.dev {
            // SAFETY: the caller passes an address with `dst.len()` readable bytes.
            Dev::Cuda(c) => unsafe { cu::memcpy_dtoh_async(dst, src, c.stream.cu_stream()) }
                .map_err(|e| drv("device-to-host copy", e))?,
            // SAFETY: as above (host memory).
            Dev::Emu(_) => unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len())
            },
        }
        self.sync()
    }

    /// `n` f32 values from device address `src`.
    pub fn download_f32(&self, src: u64, n: usize) -> Result<Vec<f32>> {
        let mut b = vec![0u8; n * 4];
        self.download(src, &mut b)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// `n` BF16 values from device address `src`, as f32.
    pub fn download_bf16(&self, src: u64, n: usize) -> Result<Vec<f32>> {
        let mut b = vec![0u8; n * 2];
        self.download(src, &mut b)?;
        Ok(b.chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect())
    }

    /// Waits for the stream; an asynchronous kernel fault surfaces here.
    pub fn sync(&self) -> Result<()> {
        self.not_capturing("waiting for the GPU")?;
        match &self.dev {
            Dev::Cuda(c) => c
                .stream
                .synchronize()
                .map_err(|e| drv("kernel execution", e)),
            Dev::Emu(_) => Ok(()), // launches run to completion
        }
    }

    /// From now on, records the name of every kernel launched (they still run), until
    /// [`Gpu::take_names`].
    pub fn record_names(&self) {
        *self.filter.borrow_mut() = Filter::Names(Vec::new());
    }

    /// The names recorded since [`Gpu::record_names`], in launch order; launches are no
    /// longer recorded.
    pub fn take_names(&self) -> Vec<String> {
        match std::mem::take(&mut *self.filter.borrow_mut()) {
            Filter::Names(v) => v,
            _ => Vec::new(),
        }
    }

    /// Runs only the launches of kernel `name` and skips every other (`None`: all run). A
    /// diagnostic: a decode step with one kernel's launches times that kernel in place
    /// (`gpu bench`); the skipped kernels' outputs are simply stale.
    pub fn only(&self, name: Option<&str>) {
        *self.filter.borrow_mut() = name.map_or(Filter::All, |n| Filter::Only(n.to_string()));
    }

    /// Launches kernel `name` on the stream.
    pub fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let gemv = self.gemv.borrow();
        let build = gemv.as_ref().filter(|b| b.replaces(name));
        let most = match build {
            Some(b) => b.variant.threads(),
            None => kernels::max_threads(name)
                .ok_or_else(|| Error::Runtime(format!("no kernel {name}")))?,
        };
        let alt = build.map(|b| &b.dev);
        let threads = cfg.block_dim.0 * cfg.block_dim.1 * cfg.block_dim.2;
        if threads > most {
            return Err(Error::Runtime(format!(
                "kernel {name}: a block of {threads} threads, more than the {most} it is built \
                 for (kernels::FUNCTIONS)"
            )));
        }
        match &mut *self.filter.borrow_mut() {
            Filter::Names(v) => v.push(name.to_string()),
            Filter::Only(k) if k != name => return Ok(()),
            _ => {}
        }
        let c = match &self.dev {
            Dev::Cuda(c) => c,
            Dev::Emu(e) => {
                let e = match alt {
                    Some(BuildDev::Emu(v)) => v,
                    _ => e,
                };
                let slots: Vec<(i32, u64)> = args.iter().map(|a| a.slot()).collect();
                let (g, b) = (cfg.grid_dim, cfg.block_dim);
                let launch = || Recorded::Launch {
                    emu: e.clone(),
                    name: name.to_string(),
                    grid: [g.0, g.1, g.2],
                    block: [b.0, b.1, b.2],
                    smem: cfg.shared_mem_bytes,
                    slots: slots.clone(),
                };
                if self.record(launch) {
                    return Ok(());
                }
                return e.launch(
                    name,
                    [g.0, g.1, g.2],
                    [b.0, b.1, b.2],
                    cfg.shared_mem_bytes,
                    &slots,
                );
            }
        };
        if let Some(&(most, regs)) = c.short.get(name) {
            if threads > most {
                return Err(Error::Runtime(format!(
                    "kernel {name} ({regs} registers) runs at most {most} threads per block on \
                     this GPU, not {threads}"
                )));
            }
        }
        let f = match alt {
            Some(BuildDev::Cuda(funcs)) => funcs.get(name),
            _ => c.funcs.get(name),
        }
        .ok_or_else(|| Error::Runtime(format!("kernel {name} is not loaded")))?;
        self.captured();
        if self.pdl.get() && self.capture.borrow().is_some() {
            return super::graph::launch_programmatic(&c.ctx, &c.side, f, cfg, args)
                .map_err(|e| drv(&format!("launching {name} (programmatic)"), e));
        }
        let mut b = self.work_stream(c).launch_builder(f);
        for a in args {
            match a {
                Arg::U64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: `args` match the kernel's C signature (each wrapper in `ops` is written
        // against its kernel) and every pointer is a live device buffer of sufficient size.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| drv(&format!("launching {name}"), e))
    }

    /// The kernels this GPU cannot run in their largest block (empty on a healthy build):
    /// "name: at most N threads per block (R registers), launched with up to M".
    pub fn short_kernels(&self) -> Vec<String> {
        let Dev::Cuda(c) = &self.dev else {
            return Vec::new();
        };
        let mut v: Vec<String> = (c.short.iter())
            .map(|(name, (most, regs))| {
                let want = kernels::max_threads(name).unwrap_or(0);
                format!("{name}: at most {most} threads per block ({regs} registers), launched with up to {want}")
            })
            .collect();
        v.sort();
        v
    }

    /// Raises the dynamic shared memory limit of kernel `name` to `bytes`.
    pub fn set_max_smem(&self, name: &str, bytes: usize) -> Result<()> {
        let f = match &self.dev {
            Dev::Cuda(c) => &c.funcs[name],
            Dev::Emu(e) => return e.set_max_smem(name, bytes),
        };
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| drv(&format!("{name}: shared memory {bytes} bytes"), e))
    }

    /// The raw stream handle (for cuBLASLt).
    pub fn raw_stream(&self) -> Result<*mut std::ffi::c_void> {
        self.not_capturing("cuBLASLt")?;
        Ok(self.cuda()?.1.cu_stream() as *mut std::ffi::c_void)
    }
}

/// The block (threads) and registers of kernel `k` when this GPU cannot run it in blocks of
/// `k.threads`: too many registers for that block, or `__launch_bounds__` below it. The
/// kernels still load, so that everything else runs; a launch past the limit is refused
/// with these numbers, and `gpu info` lists them.
fn block_limit(k: &kernels::Kernel, f: &CudaFunction) -> Result<Option<(u32, i32)>> {
    use cudarc::driver::sys::CUfunction_attribute as A;
    let get = |a| {
        // SAFETY: `f` is a function of a loaded module.
        unsafe { cu::function::get_function_attribute(f.cu_function(), a) }
            .map_err(|e| drv(&format!("kernel {} attributes", k.name), e))
    };
    let most = get(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?;
    if most >= k.threads as i32 {
        return Ok(None);
    }
    Ok(Some((
        most.max(0) as u32,
        get(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
    )))
}

/// A grid of `blocks` blocks of `threads` threads with `smem` bytes of dynamic shared memory.
pub fn cfg(blocks: (u32, u32), threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.0.max(1), blocks.1.max(1), 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}
