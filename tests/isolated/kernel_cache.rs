//! NVRTC compiles into the kernel cache named by QFORGE_KERNEL_CACHE, an environment
//! variable of the whole process: here, where no emulator test shares the process (the
//! emulator builds into the same cache).

use crate::alone;
use crate::support::nvrtc::{cubin_facts, nvrtc};
use crate::support::requires;
use qforge::runtime::cuda::kernels::{self, GEMV_SWEEP};

/// The tuning builds compile at once, one NVRTC program per thread (as a model's load does
/// before timing them), each into the kernel cache with its own kernels and block.
#[requires(nvrtc)]
#[test]
fn gemv_builds_compile_concurrently_into_the_cache() {
    let _alone = alone();
    let nv = nvrtc();
    let cache = tempfile::tempdir().unwrap();
    // QFORGE_KERNEL_CACHE is process-wide: no other test runs meanwhile (`alone`), and it is
    // unset again before the folder goes.
    std::env::set_var("QFORGE_KERNEL_CACHE", cache.path());
    let cubins = kernels::load_gemv_variants(&nv, "sm_90a", GEMV_SWEEP);
    let stored = std::fs::read_dir(cache.path()).unwrap().count();
    std::env::remove_var("QFORGE_KERNEL_CACHE");
    assert_eq!(cubins.len(), GEMV_SWEEP.len());
    for (c, &v) in cubins.iter().zip(GEMV_SWEEP) {
        let c = c.as_ref().unwrap_or_else(|e| panic!("{v}: {e}"));
        let facts = cubin_facts(c);
        assert_eq!(facts["gemv_fp8"].bound, Some(v.threads()), "{v}");
    }
    assert_eq!(stored, GEMV_SWEEP.len(), "one cubin per build in the cache");
}
