//! The GPU: driver checks, context and stream, the compiled kernels, device buffers and
//! kernel launches. All CUDA work of the backend goes through one stream, so ordering is
//! the stream's and cudarc's per-buffer event tracking is switched off.

use super::{kernels, nvrtc};
use crate::{Error, Result};
use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{
    result as cu, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg,
};
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

fn drv(what: &str, e: cu::DriverError) -> Error {
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
    info_of(&ctx, ordinal)
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

/// One kernel argument (all kernels take device pointers, ints and floats).
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// A device pointer (0 = null) or a 64-bit count.
    U64(u64),
    I32(i32),
    U32(u32),
    F32(f32),
}

/// An owned device allocation (raw, so kernels and cuBLASLt take plain pointers).
pub struct DBuf {
    pub ptr: u64,
    pub bytes: usize,
    ctx: Arc<CudaContext>,
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
        if self.ptr != 0 && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by `Gpu::alloc` in this context, freed once.
            let _ = unsafe { cu::free_sync(self.ptr) };
        }
    }
}

/// A ready GPU: context, stream and loaded kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub info: DeviceInfo,
    /// True when every kernel came from the on-disk cache; `compile_s` is the time spent
    /// compiling or loading them.
    pub kernels_cached: bool,
    pub compile_s: f64,
    funcs: HashMap<&'static str, CudaFunction>,
}

impl Gpu {
    /// Opens GPU `ordinal` ([`probe`]'s checks) and loads every kernel (NVRTC + cache).
    pub fn new(ordinal: usize) -> Result<Gpu> {
        let info = probe(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("context", e))?;
        // SAFETY: all work goes through one stream; no buffer is shared across streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
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
        let mut funcs = HashMap::new();
        for &(src, name) in kernels::FUNCTIONS {
            let f = modules[src]
                .load_function(name)
                .map_err(|e| drv(&format!("kernel {name} in kernels/{src}"), e))?;
            funcs.insert(name, f);
        }
        Ok(Gpu {
            kernels_cached: cubins.iter().all(|c| c.cached),
            compile_s: t0.elapsed().as_secs_f64(),
            ctx,
            stream,
            info,
            funcs,
        })
    }

    /// A zeroed device buffer of `bytes` bytes (at least 1).
    pub fn alloc(&self, bytes: usize) -> Result<DBuf> {
        self.ctx.bind_to_thread().map_err(|e| drv("bind", e))?;
        let n = bytes.max(1);
        // SAFETY: plain allocation and memset of the new buffer.
        let ptr = unsafe {
            let p = cu::malloc_sync(n).map_err(|e| {
                let free = self.ctx.mem_get_info().map(|m| m.0 >> 20).unwrap_or(0);
                drv(&format!("allocating {} MiB ({free} MiB free)", n >> 20), e)
            })?;
            cu::memset_d8_sync(p, 0, n).map_err(|e| drv("memset", e))?;
            p
        };
        Ok(DBuf {
            ptr,
            bytes,
            ctx: self.ctx.clone(),
        })
    }

    /// Copies host bytes to device address `dst` (stream-ordered; `src` may be freed after).
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: the caller passes an address with `src.len()` bytes of room.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| drv("host-to-device copy", e))
    }

    /// A device buffer holding `src`.
    pub fn upload_new(&self, src: &[u8]) -> Result<DBuf> {
        let b = self.alloc(src.len())?;
        self.upload(b.ptr, src)?;
        Ok(b)
    }

    /// Device-to-device copy of `bytes` bytes (stream-ordered).
    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller passes two buffers with `bytes` bytes of room.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(|e| drv("device-to-device copy", e))
    }

    /// Copies `dst.len()` bytes from device address `src` once the stream reaches it.
    pub fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        // SAFETY: the caller passes an address with `dst.len()` readable bytes.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| drv("device-to-host copy", e))?;
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

    /// Waits for the stream; an asynchronous kernel fault surfaces here.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| drv("kernel execution", e))
    }

    /// Launches kernel `name` on the stream.
    pub fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| Error::Runtime(format!("kernel {name} is not loaded")))?;
        let mut b = self.stream.launch_builder(f);
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

    /// Raises the dynamic shared memory limit of kernel `name` to `bytes`.
    pub fn set_max_smem(&self, name: &str, bytes: usize) -> Result<()> {
        let f = &self.funcs[name];
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| drv(&format!("{name}: shared memory {bytes} bytes"), e))
    }

    /// The raw stream handle (for cuBLASLt).
    pub fn raw_stream(&self) -> *mut std::ffi::c_void {
        self.stream.cu_stream() as *mut std::ffi::c_void
    }
}

/// A grid of `blocks` blocks of `threads` threads with `smem` bytes of dynamic shared memory.
pub fn cfg(blocks: (u32, u32), threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.0.max(1), blocks.1.max(1), 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}
