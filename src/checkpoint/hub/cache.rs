//! The Hugging Face cache layout, exactly as `huggingface_hub` writes it, so a model fetched by
//! either tool is found by the other:
//!
//! ```text
//! <cache>/models--org--name/blobs/<etag>              file contents (etag: sha256 for LFS files,
//!                                                    git blob id otherwise)
//! <cache>/models--org--name/blobs/<etag>.incomplete   a download in progress (resumable)
//! <cache>/models--org--name/refs/<revision>          the commit hash a branch/tag pointed to
//! <cache>/models--org--name/snapshots/<commit>/<path> relative symlink to ../../blobs/<etag>
//! <cache>/.locks/models--org--name/<etag>.lock        flock held while a blob is downloaded
//! ```

use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One repository's corner of the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    locks: PathBuf,
}

/// An exclusive lock on one blob; released when dropped (the file closes).
#[derive(Debug)]
pub struct BlobLock {
    _file: File,
}

impl RepoCache {
    /// The cache of model repository `repo_id` ("org/name") under `cache_dir`.
    pub fn new(cache_dir: &Path, repo_id: &str) -> Self {
        Self::of_kind(cache_dir, repo_id, super::RepoKind::Model)
    }

    /// The cache of a model or dataset repository (`datasets--org--name`).
    pub fn of_kind(cache_dir: &Path, repo_id: &str, kind: super::RepoKind) -> Self {
        let folder = format!("{}--{}", kind.plural(), repo_id.replace('/', "--"));
        RepoCache {
            root: cache_dir.join(&folder),
            locks: cache_dir.join(".locks").join(folder),
        }
    }

    /// `models--org--name`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The finished blob with this etag.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    /// The partial download of the blob with this etag.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// Bytes of a partial download of this blob that a resume keeps: the `.incomplete`
    /// file's length, or 0 when there is none or it is longer than the blob.
    pub fn resumable(&self, etag: &str, size: u64) -> u64 {
        let len = std::fs::metadata(self.incomplete(etag)).map_or(0, |m| m.len());
        if len <= size {
            len
        } else {
            0
        }
    }

    /// The snapshot directory of a commit.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// The commit a branch or tag pointed to when last fetched, if recorded.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// Records that `revision` points to `commit` (nothing to do for a commit hash itself).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit || self.read_ref(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        create_parent(&path)?;
        // Write then rename, so a reader never sees a half-written hash.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, commit).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// The cached commit for `revision`: the revision itself when it is a cached commit hash,
    /// else what `refs/<revision>` records.
    pub fn cached_commit(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) && self.snapshot(revision).is_dir() {
            return Some(revision.to_string());
        }
        self.read_ref(revision)
    }

    /// True when the snapshot of `commit` has `path` and it leads to an existing file
    /// (a dangling link, whose blob was deleted, does not count).
    pub fn has_file(&self, commit: &str, path: &str) -> bool {
        self.snapshot(commit).join(path).is_file()
    }

    /// Makes `snapshots/<commit>/<path>` a relative symlink to the blob `etag`.
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> Result<()> {
        let link = self.snapshot(commit).join(path);
        create_parent(&link)?;
        // Going up from the link's folder to `models--org--name`: one level per path
        // component, plus `snapshots/<commit>`.
        let depth = Path::new(path).components().count() + 1;
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
        }
        symlink(&target, &link).map_err(|e| Error::io(&link, e))
    }

    /// Takes the download lock of blob `etag`, waiting while another process (qforge or
    /// Python, both use flock on the same file) holds it. Gives up when `cancel` is raised.
    pub fn lock(&self, etag: &str, cancel: &AtomicBool) -> Result<Option<BlobLock>> {
        let path = self.locks.join(format!("{etag}.lock"));
        create_parent(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut told = false;
        loop {
            if try_lock(&file).map_err(|e| Error::io(&path, e))? {
                return Ok(Some(BlobLock { _file: file }));
            }
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if !told {
                eprintln!(
                    "qforge: waiting for another process to finish downloading {}",
                    self.blob(etag).display()
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Takes an exclusive flock without waiting; false when someone else holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// No flock here: downloads of the same blob by two processes are not serialised.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// A full 40-hex git commit hash.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e)),
        None => Ok(()),
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Without symlinks, `huggingface_hub` copies the blob; do the same.
#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let blob = link.parent().unwrap_or(Path::new(".")).join(target);
    std::fs::copy(blob, link).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        assert_eq!(cache.root(), dir.path().join("models--org--name"));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        cache.write_ref("main", commit).unwrap();
        cache.write_ref("refs/pr/1", commit).unwrap();
        let raw = std::fs::read_to_string(cache.root().join("refs/main")).unwrap();
        assert_eq!(raw, commit, "no newline, as Python writes it");
        assert_eq!(cache.read_ref("refs/pr/1").as_deref(), Some(commit));
        assert_eq!(cache.cached_commit("main").as_deref(), Some(commit));

        std::fs::create_dir_all(cache.blob("e").parent().unwrap()).unwrap();
        std::fs::write(cache.blob("e"), b"x").unwrap();
        cache.link(commit, "a/b.json", "e").unwrap();
        cache.link(commit, "c.json", "e").unwrap();
        let snap = cache.snapshot(commit);
        let target = std::fs::read_link(snap.join("a/b.json")).unwrap();
        assert_eq!(target, Path::new("../../../blobs/e"));
        let target = std::fs::read_link(snap.join("c.json")).unwrap();
        assert_eq!(target, Path::new("../../blobs/e"));
        assert!(cache.has_file(commit, "c.json"));
        assert!(!cache.has_file(commit, "d.json"));
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        let cancel = AtomicBool::new(false);
        let held = cache.lock("e", &cancel).unwrap();
        assert!(held.is_some());
        let cancelled = AtomicBool::new(true);
        assert!(cache.lock("e", &cancelled).unwrap().is_none());
        drop(held);
        assert!(cache.lock("e", &cancelled).unwrap().is_some());
    }
}
