//! The output directory: everything is written into a hidden temporary sibling and renamed into
//! place only when complete, so a failed or killed run never leaves anything that looks like a
//! finished checkpoint, and `--force` never loses the old output before the new one is whole.

use crate::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// A temporary sibling directory that becomes `final_dir` on [`Staging::commit`] and is
/// removed on drop otherwise.
pub struct Staging {
    tmp: PathBuf,
    final_dir: PathBuf,
    done: bool,
}

impl Staging {
    /// Refuses an existing `final_dir` unless `force`; creates `.NAME.qforge-tmp-PID` beside it.
    pub fn new(final_dir: &Path, force: bool) -> Result<Staging> {
        if final_dir.exists() && !force {
            return Err(Error::Output(format!(
                "{}: output already exists (use --force to replace it)",
                final_dir.display()
            )));
        }
        let name = final_dir
            .file_name()
            .ok_or_else(|| Error::Output(format!("{}: not a directory name", final_dir.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = match final_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent)
            .map_err(|e| place_error(final_dir, "its folder", &parent, e))?;
        remove_stale(&parent, &name);
        let tmp = parent.join(format!(".{name}.qforge-tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir(&tmp)
            .map_err(|e| place_error(final_dir, "the temporary folder", &tmp, e))?;
        Ok(Staging {
            tmp,
            final_dir: final_dir.to_path_buf(),
            done: false,
        })
    }

    /// Refuses, before anything is written, an output whose tensors alone (`bytes`) exceed the
    /// free space where it is written: a 70B output that cannot fit fails at once, not after
    /// minutes of work. Every write still reports a full disk (other files, other writers).
    pub fn ensure_space(&self, bytes: u64) -> Result<()> {
        let Ok(fs) = rustix::fs::statvfs(&self.tmp) else {
            return Ok(()); // unknown: the writes will tell
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if bytes <= free {
            return Ok(());
        }
        Err(Error::Output(format!(
            "output {}: no space left on device: its tensors need {}, {} are free there",
            self.final_dir.display(),
            size(bytes),
            size(free)
        )))
    }

    /// Where files go while the run is in progress.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Writes a small file into the staging directory.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
        let path = self.tmp.join(name);
        fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    }

    /// Moves the finished directory into place (replacing an old one when forced).
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_dir(&self.tmp)?;
        if self.final_dir.exists() {
            let old = self.tmp.with_extension("old");
            fs::rename(&self.final_dir, &old).map_err(|e| Error::io(&self.final_dir, e))?;
            fs::rename(&self.tmp, &self.final_dir).map_err(|e| Error::io(&self.final_dir, e))?;
            if let Some(warning) = remove_old(&old) {
                eprintln!("qforge: warning: {warning}");
            }
        } else {
            fs::rename(&self.tmp, &self.final_dir).map_err(|e| Error::io(&self.final_dir, e))?;
        }
        self.done = true;
        Ok(self.final_dir.clone())
    }
}

/// Deletes the replaced output `old` (a folder, or a file that `--force` replaced); a warning
/// naming what is left when it cannot be deleted (the new output is in place regardless).
fn remove_old(old: &Path) -> Option<String> {
    let is_dir = fs::symlink_metadata(old).is_ok_and(|m| m.is_dir());
    let removed = match is_dir {
        true => fs::remove_dir_all(old),
        false => fs::remove_file(old),
    };
    removed.err().map(|e| {
        format!(
            "the replaced output could not be deleted and is left at {}: {e}",
            old.display()
        )
    })
}

/// Removes the temporary folders of earlier runs for the same output whose process is gone
/// (killed, out of memory, Ctrl-C: no destructor ran), saying so. For a 70B output each
/// holds up to 70 GB. A live process's folder (another run writing now) is kept, and so is
/// everything when `/proc` is not there to tell.
fn remove_stale(parent: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{name}.qforge-tmp-");
    for e in entries.flatten() {
        let file = e.file_name();
        let pid = file.to_str().and_then(|f| f.strip_prefix(&prefix));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if fs::remove_dir_all(e.path()).is_ok() {
            eprintln!(
                "qforge: removed {}, left by an interrupted run",
                e.path().display()
            );
        }
    }
}

/// `bytes` for messages: MB below a GB, GB above (decimal units, as disk sizes are sold).
fn size(bytes: u64) -> String {
    if bytes < 1_000_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} GB", bytes as f64 / 1e9)
    }
}

/// Refuses an output that is the input model's folder or a folder above it. `--force` would
/// replace the input with the output, and `--verify` would then compare the output with
/// itself and pass.
pub fn check_not_input(output: &Path, input: &Path) -> Result<()> {
    // An output that does not exist yet cannot hold the (existing) input.
    let (Ok(out), Ok(inp)) = (output.canonicalize(), input.canonicalize()) else {
        return Ok(());
    };
    if !inp.starts_with(&out) {
        return Ok(());
    }
    let what = if inp == out { "is" } else { "contains" };
    Err(Error::Output(format!(
        "output {}: {what} the input model {}; write the output elsewhere",
        output.display(),
        input.display()
    )))
}

/// Why the output cannot be set up at `at` (its parent folder, or the temporary folder beside
/// it), said in terms of the `--output` the user gave: a file in the way is named as such, where
/// the OS would only say "File exists" or "Not a directory" about some ancestor.
fn place_error(final_dir: &Path, what: &str, at: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(28) {
        return Error::io(at, e);
    }
    let blocker = at.ancestors().find(|a| a.exists() && !a.is_dir());
    let why = match blocker {
        Some(f) => format!("{} is a file, not a folder", f.display()),
        None => e.to_string(),
    };
    Error::Output(format!(
        "output {}: cannot create {what} {}: {why}",
        final_dir.display(),
        at.display()
    ))
}

/// Copies a file's bytes (not its permissions: sources in caches or fixtures are often
/// read-only, and the output should not be).
pub fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    std::fs::write(to, bytes).map_err(|e| Error::io(to, e))
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() {
            let f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::remove_old;

    #[test]
    fn old_output_is_removed_or_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".out.old");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(remove_old(&file), None);
        assert!(!file.exists());
        let folder = dir.path().join(".dir.old");
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        assert_eq!(remove_old(&folder), None);
        assert!(!folder.exists());
        // Not deletable, even by root.
        let stuck = std::path::Path::new("/proc/self/status");
        let w = remove_old(stuck).expect("a warning");
        assert!(w.contains("/proc/self/status"), "{w}");
    }
}
