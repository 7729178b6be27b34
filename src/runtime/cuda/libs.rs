//! Finding and opening the CUDA libraries qforge loads itself at run time (NVRTC, cuBLASLt).
//!
//! cudarc's own loaders search fixed names (`libnvrtc.so`, `.so.12`, …) and miss a CUDA-13
//! install (`.so.13`) or a pip wheel outside the loader path, so these two are opened by
//! path: an explicit env var, the CUDA toolkit folders, the loader's search path, then the
//! `nvidia/…/lib` folders of Python site-packages (PyTorch and the `nvidia-*` wheels).

use crate::{Error, Result};
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::path::{Path, PathBuf};

/// One library to look for.
pub struct LibSpec {
    /// Human name for messages, e.g. "NVRTC".
    pub what: &'static str,
    /// Env var holding the library's full path.
    pub env_path: &'static str,
    /// Env var holding a folder to look in first.
    pub env_dir: &'static str,
    /// File names, most wanted first, e.g. `libnvrtc.so.13`.
    pub names: &'static [&'static str],
    /// Folders below a site-packages folder that the wheels use, e.g. `nvidia/cu13/lib`.
    pub wheel_dirs: &'static [&'static str],
    /// What to install when it is missing (ends the error message).
    pub hint: &'static str,
}

/// An opened library and where it came from.
pub struct Opened {
    pub lib: Library,
    pub path: PathBuf,
}

/// Opens `path` with RTLD_NOW | RTLD_GLOBAL (global so that a library it dlopens later by
/// soname, e.g. `libnvrtc-builtins`, can be pre-loaded and found).
pub fn open(path: &Path) -> std::result::Result<Library, String> {
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's libraries
    // found in the places listed above (or named explicitly by the user).
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())
}

/// Folders of the CUDA toolkit: `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda*`, `/opt/cuda`.
pub fn toolkit_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push("/usr/local/cuda".into());
    let mut versioned = list_dir("/usr/local", |n| n.starts_with("cuda-"));
    versioned.sort();
    versioned.reverse(); // newest first
    roots.extend(versioned);
    roots.push("/opt/cuda".into());
    roots
}

/// Python site-packages folders that may hold `nvidia-*` wheels: `$PYTHONPATH`, virtualenv,
/// conda, user and system installs, pyenv versions.
pub fn site_packages() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("PYTHONPATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
        prefixes.push(home.join(".local"));
        prefixes.extend(list_dir(home.join(".pyenv/versions"), |_| true));
    }
    for p in ["/usr/local", "/usr", "/opt/conda"] {
        prefixes.push(p.into());
    }
    for prefix in prefixes {
        for py in list_dir(prefix.join("lib"), |n| n.starts_with("python3")) {
            out.push(py.join("site-packages"));
            out.push(py.join("dist-packages"));
        }
    }
    out.push("/usr/lib/python3/dist-packages".into());
    out
}

fn list_dir(dir: impl AsRef<Path>, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir.as_ref()) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .collect()
}

/// Every place `spec` may be, in search order (explicit paths, then bare names for the
/// loader's own search).
pub fn candidates(spec: &LibSpec) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(spec.env_dir)
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for root in toolkit_dirs() {
        dirs.push(root.join("lib64"));
        dirs.push(root.join("lib"));
        dirs.push(root.join("targets/x86_64-linux/lib"));
    }
    let mut out: Vec<PathBuf> = std::env::var_os(spec.env_path)
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for d in &dirs {
        out.extend(spec.names.iter().map(|n| d.join(n)));
    }
    out.extend(spec.names.iter().map(PathBuf::from));
    for sp in site_packages() {
        for wd in spec.wheel_dirs {
            out.extend(spec.names.iter().map(|n| sp.join(wd).join(n)));
        }
    }
    out
}

/// Opens the first candidate that loads. The error lists where it looked and what to install.
pub fn find(spec: &LibSpec) -> Result<Opened> {
    let mut errors = Vec::new();
    for path in candidates(spec) {
        // A relative bare name goes to the loader's search; a path must exist.
        if path.is_absolute() && !path.exists() {
            continue;
        }
        match open(&path) {
            Ok(lib) => return Ok(Opened { lib, path }),
            Err(e) if path.is_absolute() => errors.push(format!("{}: {e}", path.display())),
            Err(_) => {}
        }
    }
    let tried = if errors.is_empty() {
        String::new()
    } else {
        format!(" (found but failed to load: {})", errors.join("; "))
    };
    Err(Error::Runtime(format!(
        "{} not found: set {} to the library's path or {} to its folder{tried}; {}",
        spec.what, spec.env_path, spec.env_dir, spec.hint
    )))
}
