//! Tuning builds of `kernels/gemv.cu` ([`GemvVariant`]). While one is set
//! ([`Gpu::set_gemv`]), its GEMV kernels stand in for the default build's in every launch,
//! graph captures included, so the same weights can be timed under each build (`gpu
//! selftest`'s gemv-sweep stage) and checked against the default build on the emulator.

use super::emu::{self, Emu};
use super::gpu::{drv, Dev, Gpu};
use super::kernels::{self, GemvVariant, GEMV_DEFAULT, GEMV_VARIANT_KERNELS};
use super::nvrtc;
use crate::Result;
use cudarc::driver::CudaFunction;
use std::collections::HashMap;
use std::sync::Arc;

/// A loaded variant build.
pub(super) struct GemvBuild {
    pub(super) variant: GemvVariant,
    pub(super) dev: BuildDev,
}

/// Its kernels: functions of a module in the GPU's context, or an emulator library.
pub(super) enum BuildDev {
    Cuda(HashMap<&'static str, CudaFunction>),
    Emu(Arc<Emu>),
}

impl GemvBuild {
    /// True when kernel `name` is one this build replaces.
    pub(super) fn replaces(&self, name: &str) -> bool {
        GEMV_VARIANT_KERNELS.contains(&name)
    }
}

impl Gpu {
    /// Runs the GEMVs of build `v` from now on ([`GEMV_DEFAULT`]: the default kernels
    /// again). The build is compiled (or read from the kernel cache) and loaded first.
    pub fn set_gemv(&self, v: GemvVariant) -> Result<()> {
        self.not_capturing("changing the GEMV build")?;
        if v == GEMV_DEFAULT {
            *self.gemv.borrow_mut() = None;
            return Ok(());
        }
        let dev = match &self.dev {
            Dev::Emu(_) => BuildDev::Emu(emu::gemv_variant(v)?),
            Dev::Cuda(c) => {
                let cubin = kernels::load_gemv_variant(nvrtc::get()?, &self.info.arch, v)?;
                let m = (c.ctx)
                    .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                    .map_err(|e| drv(&format!("loading kernels/gemv.cu as {v}"), e))?;
                let mut funcs = HashMap::new();
                for &name in GEMV_VARIANT_KERNELS {
                    let f = (m.load_function(name))
                        .map_err(|e| drv(&format!("kernel {name} of gemv.cu as {v}"), e))?;
                    funcs.insert(name, f);
                }
                BuildDev::Cuda(funcs)
            }
        };
        *self.gemv.borrow_mut() = Some(GemvBuild { variant: v, dev });
        Ok(())
    }

    /// Compiles the builds `vs` into the kernel cache at once (on a GPU; see
    /// [`kernels::load_gemv_variants`]), so that [`Gpu::set_gemv`] then only loads each.
    /// Failures are left for `set_gemv` to report.
    pub fn prepare_gemv(&self, vs: &[GemvVariant]) {
        if let (Dev::Cuda(_), Ok(nv)) = (&self.dev, nvrtc::get()) {
            kernels::load_gemv_variants(nv, &self.info.arch, vs);
        }
    }

    /// The GEMV build in use.
    pub fn gemv(&self) -> GemvVariant {
        self.gemv
            .borrow()
            .as_ref()
            .map_or(GEMV_DEFAULT, |b| b.variant)
    }

    /// The block GEMV kernel `name` is launched with: the build's for the kernels it
    /// replaces, else the default 128.
    pub fn gemv_threads(&self, name: &str) -> u32 {
        match self.gemv.borrow().as_ref() {
            Some(b) if b.replaces(name) => b.variant.threads(),
            _ => GEMV_DEFAULT.threads(),
        }
    }
}
