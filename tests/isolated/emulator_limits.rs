//! The emulator's launch checks, in a process of their own: the shared-memory limit of a
//! kernel is process-wide in the emulator, and a model loaded by another test raises the
//! attention kernel's (forward.rs), so this cannot run beside the CUDA tests of `it`.

use crate::alone;
use crate::support::cuda::emulator;
use crate::support::requires;
use qforge::runtime::cuda::gpu::{cfg, Arg};

/// The emulator catches what a GPU would reject or leave undefined: argument lists that do
/// not match the kernel, dynamic shared memory beyond the limit, shuffles in partial warps.
#[requires(emulator)]
#[test]
fn emulator_rejects_bad_launches() {
    let _alone = alone();
    let g = emulator();
    let buf = g.alloc(64 * 2 + 64 + 4).unwrap();
    let err = |name: &str, c, args: &[Arg]| g.launch(name, c, args).unwrap_err().to_string();
    let e = err("gemv_bf16", cfg((1, 1), 128, 0), &[Arg::U64(buf.ptr)]);
    assert!(e.contains("1 arguments given, the kernel takes 8"), "{e}");
    let quant = |width: Arg| {
        [
            Arg::U64(buf.ptr),
            width,
            Arg::U64(buf.at(128)),
            Arg::U64(buf.at(192)),
            Arg::I32(0),
        ]
    };
    let e = err("quant_rows", cfg((1, 1), 64, 0), &quant(Arg::U32(64)));
    assert!(e.contains("argument 1 has the wrong type"), "{e}");
    let e = err("quant_rows", cfg((1, 1), 48, 0), &quant(Arg::I32(64)));
    assert!(e.contains("partial warp"), "{e}");
    g.launch("quant_rows", cfg((1, 1), 64, 0), &quant(Arg::I32(64)))
        .unwrap();
    let mut att = vec![Arg::U64(buf.ptr); 4];
    att.extend([Arg::I32(16), Arg::U64(buf.at(192))]);
    att.extend([8, 1, 128, 1].map(Arg::I32));
    att.extend([Arg::F32(0.125), Arg::I32(16), Arg::U64(0)]);
    let e = err("attention", cfg((1, 1), 256, 64 << 10), &att);
    assert!(
        e.contains("65536 bytes of dynamic shared memory exceed the limit 49152"),
        "{e}"
    );
    let e = err("no_such_kernel", cfg((1, 1), 32, 0), &[]);
    assert!(e.contains("no kernel no_such_kernel"), "{e}");
}
