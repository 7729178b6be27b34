//! Graph capture: a decode step's launches recorded once and replayed as one CUDA graph, so
//! the CPU does not issue (and the GPU does not wait between) some 900 small launches per
//! token of a 70B model. Every kernel argument of a decode step is the same at every position
//! (the position itself is read from device memory), so one graph serves every step.
//!
//! Capture runs on a side stream (capture cannot start on the legacy default stream); the
//! graph is replayed on the default stream, ordered with everything else. Between
//! [`Gpu::begin_capture`] and [`Gpu::end_capture`] kernel launches and device-to-device
//! copies are recorded, not run; allocations, host copies and waits are errors (as CUDA
//! would reject them). The emulator records the same calls and replays them in order.
//!
//! On Hopper the captured launches are programmatic (PDL): a kernel may start while its
//! predecessor finishes, so the gap between the ~900 dependent kernels shrinks, and a GEMV
//! of a `-pf` build loads its first weights before it waits (`grid_dep_wait()` in
//! kernels/common.cuh, which every kernel calls before touching what another kernel reads or
//! writes; the emulator checks that each one does). `QFORGE_PDL=0` turns it off; a capture
//! that fails with it is retried without (see `CudaModel::capture_decode`).

use super::gpu::Arg;
use super::gpu::{Dev, Gpu};
use crate::{Error, Result};
use cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    result as cu, CudaContext, CudaFunction, CudaGraph, CudaStream, LaunchConfig,
};
use std::ffi::c_void;
use std::sync::Arc;

/// What the emulator records during a capture.
pub(super) enum Recorded {
    Launch {
        /// The library it runs in: the emulator's, or a GEMV build's.
        emu: Arc<super::emu::Emu>,
        name: String,
        grid: [u32; 3],
        block: [u32; 3],
        smem: u32,
        slots: Vec<(i32, u64)>,
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
}

/// A capture in progress (on a GPU: the operations recorded so far).
pub(super) enum Capture {
    Cuda(usize),
    Emu(Vec<Recorded>),
}

/// A recorded sequence of launches, replayed by [`Gpu::replay`].
pub struct Graph(Inner);

enum Inner {
    Cuda(CudaGraph),
    /// A capture that recorded nothing (every launch filtered out, see `Gpu::only`).
    Empty,
    Emu(Vec<Recorded>),
}

fn capture_error(what: &str, e: cu::DriverError) -> Error {
    Error::Runtime(format!("CUDA graph {what}: {e:?}"))
}

impl Gpu {
    /// Starts recording launches instead of running them.
    pub fn begin_capture(&self) -> Result<()> {
        self.not_capturing("starting a capture")?;
        let cap = match &self.dev {
            Dev::Cuda(c) => {
                c.side
                    .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(|e| capture_error("capture", e))?;
                Capture::Cuda(0)
            }
            Dev::Emu(_) => Capture::Emu(Vec::new()),
        };
        *self.capture.borrow_mut() = Some(cap);
        Ok(())
    }

    /// Ends the capture (also after a failed launch, which the caller then reports) and
    /// returns what was recorded.
    pub fn end_capture(&self) -> Result<Graph> {
        let cap = self.capture.borrow_mut().take();
        match (cap, &self.dev) {
            (Some(Capture::Cuda(0)), Dev::Cuda(c)) => {
                let _ = c.side.end_capture(CUgraphInstantiate_flags(0)); // ends the capture
                Ok(Graph(Inner::Empty))
            }
            (Some(Capture::Cuda(_)), Dev::Cuda(c)) => c
                .side
                .end_capture(CUgraphInstantiate_flags(0))
                .map_err(|e| capture_error("instantiation", e))?
                .map(|g| Graph(Inner::Cuda(g)))
                .ok_or_else(|| Error::Runtime("CUDA graph capture recorded nothing".into())),
            (Some(Capture::Emu(list)), Dev::Emu(_)) => Ok(Graph(Inner::Emu(list))),
            _ => Err(Error::Runtime("end_capture without begin_capture".into())),
        }
    }

    /// Runs a recorded graph on the stream.
    pub fn replay(&self, graph: &Graph) -> Result<()> {
        self.not_capturing("replaying a graph")?;
        match (&graph.0, &self.dev) {
            (Inner::Empty, _) => Ok(()),
            (Inner::Cuda(g), Dev::Cuda(c)) => {
                // SAFETY: the graph was captured in this context; its buffers outlive it
                // (the model owns both).
                unsafe { cu::graph::launch(g.cu_graph_exec(), c.stream.cu_stream()) }
                    .map_err(|e| capture_error("launch", e))
            }
            (Inner::Emu(list), Dev::Emu(_)) => {
                for r in list {
                    match r {
                        Recorded::Launch {
                            emu,
                            name,
                            grid,
                            block,
                            smem,
                            slots,
                        } => emu.launch(name, *grid, *block, *smem, slots)?,
                        // SAFETY: as `Gpu::copy`, when it was recorded.
                        Recorded::Copy { dst, src, bytes } => unsafe {
                            std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes)
                        },
                    }
                }
                Ok(())
            }
            _ => Err(Error::Runtime(
                "a graph replayed on another kind of device".into(),
            )),
        }
    }

    /// True (and `r()` recorded) while the emulator captures.
    pub(super) fn record(&self, r: impl FnOnce() -> Recorded) -> bool {
        match self.capture.borrow_mut().as_mut() {
            Some(Capture::Emu(list)) => {
                list.push(r());
                true
            }
            _ => false,
        }
    }

    /// Counts an operation a CUDA capture records.
    pub(super) fn captured(&self) {
        if let Some(Capture::Cuda(n)) = self.capture.borrow_mut().as_mut() {
            *n += 1;
        }
    }

    /// An error naming `what` while a capture is in progress.
    pub(super) fn not_capturing(&self, what: &str) -> Result<()> {
        match self.capture.borrow().is_some() {
            true => Err(Error::Runtime(format!(
                "{what} is not allowed during a CUDA graph capture"
            ))),
            false => Ok(()),
        }
    }

    /// The stream launches go to: the side stream while capturing.
    pub(super) fn work_stream<'a>(
        &self,
        c: &'a super::gpu::Cuda,
    ) -> &'a std::sync::Arc<cudarc::driver::CudaStream> {
        match self.capture.borrow().is_some() {
            true => &c.side,
            false => &c.stream,
        }
    }
}

/// Programmatic launches are on by default from compute capability 9.0 (`griddepcontrol`),
/// unless `QFORGE_PDL` is `0`.
pub(super) fn pdl_default(cc: (i32, i32)) -> bool {
    cc >= (9, 0) && std::env::var_os("QFORGE_PDL").is_none_or(|v| v != "0")
}

impl Gpu {
    /// Turns programmatic launches of captured kernels on or off (for the next capture);
    /// they stay off on GPUs before compute capability 9.0 and on the emulator.
    pub fn set_pdl(&self, on: bool) {
        let able = !self.is_emulated() && self.info.cc >= (9, 0);
        self.pdl.set(on && able);
    }

    /// Whether captured kernels are launched programmatically.
    pub fn pdl(&self) -> bool {
        self.pdl.get()
    }
}

/// Launches `f` on `stream` with programmatic stream serialization: it may begin before the
/// kernel ahead of it has finished (each kernel's `grid_dep_wait()` orders what matters).
pub(super) fn launch_programmatic(
    ctx: &Arc<CudaContext>,
    stream: &CudaStream,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg],
) -> std::result::Result<(), cu::DriverError> {
    ctx.bind_to_thread()?;
    // The argument values in 8-byte slots (a 4-byte value in the low bytes, which on a
    // little-endian host come first), then pointers to them (`kernelParams`).
    let mut vals: Vec<u64> = args.iter().map(|a| a.slot().1).collect();
    let mut params: Vec<*mut c_void> = vals.iter_mut().map(|v| (v as *mut u64).cast()).collect();
    // SAFETY: a zeroed union is a valid value; the one field set is the attribute's.
    let mut attr = unsafe {
        let mut value: sys::CUlaunchAttributeValue = std::mem::zeroed();
        value.programmaticStreamSerializationAllowed = 1;
        sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        }
    };
    let (g, b) = (cfg.grid_dim, cfg.block_dim);
    let config = sys::CUlaunchConfig {
        gridDimX: g.0,
        gridDimY: g.1,
        gridDimZ: g.2,
        blockDimX: b.0,
        blockDimY: b.1,
        blockDimZ: b.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: `args` match the kernel's C signature (as in `Gpu::launch`), each value lives
    // in `vals` until the call returns (the driver copies them), and `config` points at
    // `attr`, alive for the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}
