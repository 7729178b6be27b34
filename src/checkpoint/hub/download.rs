//! Fetching blobs into the cache: resumable (`blobs/<etag>.incomplete`, continued with a Range
//! request, also after the connection drops mid-file), checked (size, and sha256 for LFS files
//! whose etag is their sha256), published atomically (rename to `blobs/<etag>`, then the
//! snapshot symlink), with one progress bar for all files and several files at a time.

use super::cache::RepoCache;
use super::errors::{Ctx, Failure};
use super::http::{backoff, Client, FileMeta};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes moved per read/write.
const CHUNK: usize = 1 << 20;

/// One file to fetch at a pinned commit.
#[derive(Debug, Clone)]
pub struct Job {
    pub path: String,
    pub meta: FileMeta,
}

/// Everything the download threads share.
pub struct Downloader<'a> {
    pub client: &'a Client,
    pub cache: &'a RepoCache,
    pub ctx: &'a Ctx<'a>,
    pub commit: &'a str,
    pub max_retries: u32,
    pub bar: &'a ProgressBar,
    pub cancel: &'a AtomicBool,
}

/// Why one transfer (one GET) stopped early.
enum Stop {
    /// Worth a retry from where we are: dropped connection, timeout, 5xx.
    Transient(String),
    /// A hub error or protocol violation: stop.
    Fatal(Error),
}

/// The overall bar: bytes done / total and speed, drawn on stderr only when `show` and it is
/// a terminal. `done` bytes (partial files being resumed) count as done from the start, so
/// they do not inflate the speed. Elsewhere a single line says what is being fetched.
pub fn progress_bar(show: bool, total: u64, done: u64, label: &str) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target).with_position(done);
    if show && bar.is_hidden() {
        eprintln!(
            "qforge: {label}, {:.1} MB",
            (total - done.min(total)) as f64 / 1e6
        );
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_string());
    bar
}

/// Runs `work` on every item with up to `workers` threads; the first error stops the others
/// (they see `cancel`) and is returned. Results keep the items' order.
pub fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    cancel: &AtomicBool,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let worker = || {
        while !cancel.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            match work(item) {
                Ok(r) => lock(&results)[i] = Some(r),
                Err(e) => {
                    lock(&first_error).get_or_insert(e);
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers.clamp(1, items.len().max(1)) {
            s.spawn(worker);
        }
        worker();
    });
    if let Some(e) = lock(&first_error).take() {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(cancelled());
    }
    let results = std::mem::take(&mut *lock(&results));
    Ok(results.into_iter().flatten().collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cancelled() -> Error {
    Error::Hub("download cancelled".into())
}

impl Downloader<'_> {
    /// Makes `snapshots/<commit>/<path>` available: reuses the blob if another file or commit
    /// already brought it, else downloads it under the blob's lock.
    pub fn fetch(&self, job: &Job) -> Result<()> {
        let FileMeta { etag, size, .. } = &job.meta;
        let blob = self.cache.blob(etag);
        if !is_complete(&blob, *size) {
            let Some(_lock) = self.cache.lock(etag, self.cancel)? else {
                return Err(cancelled());
            };
            // Another process may have finished it while we waited for the lock.
            if !is_complete(&blob, *size) {
                self.download(job)?;
            } else {
                self.bar.inc(*size);
            }
        } else {
            self.bar.inc(*size);
        }
        self.cache.link(self.commit, &job.path, etag)
    }

    /// Downloads into `<etag>.incomplete` (resuming it), checks it, renames it into place.
    fn download(&self, job: &Job) -> Result<()> {
        let FileMeta { etag, size, .. } = &job.meta;
        let part = self.cache.incomplete(etag);
        if let Some(dir) = part.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.disk_error(&part, e, job, 0))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&part)
            .map_err(|e| Error::io(&part, e))?;
        // Already counted in the bar (see `RepoCache::resumable`).
        let mut have = self.cache.resumable(etag, *size);
        if have == 0 {
            file.set_len(0).map_err(|e| Error::io(&part, e))?;
        }
        // LFS blobs are named by their sha256: check it (also over the resumed prefix).
        let mut hasher = is_sha256(etag).then(Sha256::new);
        if let Some(h) = hasher.as_mut() {
            hash_prefix(&part, have, h)?;
        }
        let url = self
            .client
            .resolve_url(&self.ctx.url_repo(), self.commit, &job.path);
        let mut attempt = 0;
        while have < *size {
            let why = match self.transfer(&url, job, &mut file, &mut have, &mut hasher) {
                Ok(()) if have >= *size => break,
                Ok(()) => "connection closed early".to_string(),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Transient(why)) => why,
            };
            if attempt >= self.max_retries {
                let why = format!("{why} after {have} of {size} bytes; run again to resume");
                return Err(self.ctx.error(Failure::Network(why), Some(&job.path)));
            }
            attempt += 1;
            std::thread::sleep(backoff(attempt));
        }
        file.sync_data()
            .map_err(|e| self.disk_error(&part, e, job, have))?;
        drop(file);
        self.verify(job, &part, have, hasher)?;
        let blob = self.cache.blob(etag);
        std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))
    }

    /// One GET from `have` on, appending to `file`.
    fn transfer(
        &self,
        url: &str,
        job: &Job,
        file: &mut File,
        have: &mut u64,
        hasher: &mut Option<Sha256>,
    ) -> Result<(), Stop> {
        let size = job.meta.size;
        let ranged = self.client.get_from(url, *have).map_err(|f| {
            if f.is_transient() {
                Stop::Transient(failure_text(&f))
            } else {
                Stop::Fatal(self.ctx.error(f, Some(&job.path)))
            }
        })?;
        if ranged.status == 416 || ranged.start != *have {
            // The server could not continue where we are: start over.
            let part = self.cache.incomplete(&job.meta.etag);
            file.set_len(0)
                .map_err(|e| Stop::Fatal(Error::io(&part, e)))?;
            self.bar.dec(*have);
            *have = 0;
            *hasher = is_sha256(&job.meta.etag).then(Sha256::new);
            if ranged.status == 416 || ranged.start != 0 {
                return Err(Stop::Transient("server refused to resume".into()));
            }
        }
        let mut body = ranged.body;
        let mut buf = vec![0u8; CHUNK];
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Fatal(cancelled()));
            }
            let n = match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Stop::Transient(e.to_string())),
            };
            if *have + n as u64 > size {
                let why = format!("server sent more than the announced {size} bytes");
                return Err(Stop::Fatal(
                    self.ctx.error(Failure::Protocol(why), Some(&job.path)),
                ));
            }
            let part = self.cache.incomplete(&job.meta.etag);
            file.write_all(&buf[..n])
                .map_err(|e| Stop::Fatal(self.disk_error(&part, e, job, *have)))?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            *have += n as u64;
            self.bar.inc(n as u64);
        }
    }

    /// Size and (for LFS) sha256 must match what the hub announced; a bad file is removed.
    fn verify(&self, job: &Job, part: &Path, have: u64, hasher: Option<Sha256>) -> Result<()> {
        let expected = &job.meta.etag;
        let problem = if have != job.meta.size {
            Some(format!("size {have} instead of {}", job.meta.size))
        } else {
            hasher
                .map(|h| to_hex(&h.finalize()))
                .filter(|got| got != expected)
                .map(|got| format!("sha256 {got} instead of {expected}"))
        };
        let Some(problem) = problem else {
            return Ok(());
        };
        let _ = std::fs::remove_file(part);
        Err(Error::Hub(format!(
            "downloaded {} from {} is corrupt ({problem}); the partial file was removed, run again",
            job.path, self.ctx.repo
        )))
    }

    /// Write failures, with disk-full spelled out; the partial file stays for a resume.
    fn disk_error(&self, part: &Path, e: std::io::Error, job: &Job, have: u64) -> Error {
        if e.raw_os_error() == Some(28) {
            return Error::Hub(format!(
                "no space left on device writing {} ({} of {} bytes of {} done); free space or \
                 point HF_HUB_CACHE to a bigger disk; the partial file is kept and the download \
                 resumes on the next run",
                part.display(),
                have,
                job.meta.size,
                job.path
            ));
        }
        Error::io(part, e)
    }
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Network(e) | Failure::Protocol(e) => e.clone(),
        Failure::Status { code, .. } => format!("HTTP {code}"),
    }
}

/// A finished blob of the right size.
fn is_complete(blob: &Path, size: u64) -> bool {
    std::fs::metadata(blob).is_ok_and(|m| m.is_file() && m.len() == size)
}

fn is_sha256(etag: &str) -> bool {
    etag.len() == 64 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Feeds the first `len` bytes of `path` (a resumed partial download) to `hasher`.
fn hash_prefix(path: &Path, len: u64, hasher: &mut Sha256) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = file.take(len);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_order_and_stops_on_error() {
        let cancel = AtomicBool::new(false);
        let items: Vec<u32> = (0..20).collect();
        let out = run_parallel(&items, 4, &cancel, |x| Ok(x * 2)).unwrap();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let cancel = AtomicBool::new(false);
        let err = run_parallel(&items, 4, &cancel, |x| {
            if *x == 7 {
                Err(Error::Hub("seven".into()))
            } else {
                Ok(*x)
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "seven");
    }

    #[test]
    fn sha256_etags() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"a".repeat(40)));
        assert_eq!(to_hex(&[0, 255]), "00ff");
    }
}
