//! The one error type of the library. Every message is a single line meant for the user:
//! it names the file, tensor or key at fault and, where there is one, the fix.

use std::path::PathBuf;

/// Everything that can go wrong in qforge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS-level I/O failure on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The recipe YAML is invalid, or asks for something unknown.
    #[error("recipe: {0}")]
    Recipe(String),
    /// Something the recipe or the model asks for that qforge does not support (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The input checkpoint is missing, corrupt or inconsistent.
    #[error("{0}")]
    Checkpoint(String),
    /// A weight cannot be quantized (NaN/Inf, bad dtype, bad shape).
    #[error("{0}")]
    Quantize(String),
    /// The output location is unusable (exists, not writable, disk full).
    #[error("{0}")]
    Output(String),
    /// Loading or running a model failed.
    #[error("{0}")]
    Runtime(String),
    /// Hub download failures (auth, not found, network, offline).
    #[error("{0}")]
    Hub(String),
    /// `verify` ran but the quantized model does not agree enough with the reference.
    #[error("{0}")]
    Verify(String),
    /// Calibration failed (NaN activations, a Hessian that cannot be factored, ...).
    #[error("{0}")]
    Calibration(String),
    /// A dataset (calibration samples, eval task documents) is missing, empty or malformed.
    #[error("{0}")]
    Dataset(String),
    /// `eval` cannot run as asked (unknown task, incompatible reference, ...).
    #[error("{0}")]
    Eval(String),
    /// `check`: the output would not load in the serving engine as asked.
    #[error("{0}")]
    Serving(String),
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `io::Error` with the path it concerns. Disk-full gets its own wording.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(28) {
            return Error::Output(format!("{}: no space left on device", path.display()));
        }
        Error::Io { path, source }
    }
}
