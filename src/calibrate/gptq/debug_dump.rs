//! A developer's aid, not a user feature: with `QFORGE_GPTQ_DUMP=DIR` set, every GPTQ solve
//! writes its accumulated Hessian (`NNN.hsum.f32`, `Σ 2·XᵀX` before `/ nsamples`), its
//! `Hinv` (`NNN.hinv.f32`, the upper factor, in the working column order) and the
//! fake-quantized weight (`NNN.wq.bf16`) as raw little-endian arrays, `NNN` counting the
//! solves of the run (layer by layer: q, k, v, o, gate, up, down). `scripts/gptq_dump.py`
//! writes the same arrays from llm-compressor's own helpers, to find the first stage at
//! which the two differ (docs/calibration.md, "What is matched").

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

static SOLVES: AtomicUsize = AtomicUsize::new(0);

pub(super) struct Dump {
    dir: PathBuf,
    index: usize,
}

impl Dump {
    /// A dump for this solve, when `QFORGE_GPTQ_DUMP` names a directory.
    pub(super) fn from_env(rows: usize, cols: usize) -> Option<Dump> {
        let dir = PathBuf::from(std::env::var_os("QFORGE_GPTQ_DUMP")?);
        let index = SOLVES.fetch_add(1, Ordering::SeqCst);
        eprintln!("QFORGE_GPTQ_DUMP: solve {index:03} is a [{rows}, {cols}] weight");
        Some(Dump { dir, index })
    }

    pub(super) fn write_f32(&self, kind: &str, values: &[f32]) {
        self.write(
            kind,
            "f32",
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
    }

    pub(super) fn write_bf16(&self, kind: &str, values: &[u16]) {
        self.write(
            kind,
            "bf16",
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
    }

    /// Best effort: a dump that cannot be written is reported, never fatal.
    fn write(&self, kind: &str, ext: &str, bytes: Vec<u8>) {
        let path = self.dir.join(format!("{:03}.{kind}.{ext}", self.index));
        if let Err(e) =
            std::fs::create_dir_all(&self.dir).and_then(|_| std::fs::write(&path, bytes))
        {
            eprintln!("QFORGE_GPTQ_DUMP: cannot write {}: {e}", path.display());
        }
    }
}
