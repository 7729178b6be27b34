//! `--model` as a local directory or a Hugging Face repo id. A repo is fetched into the
//! standard Hugging Face cache (shared with Python's `huggingface_hub`: same layout, same
//! environment variables, same lock files) and its snapshot directory is returned, which the
//! reader then treats like any local model directory.
//!
//! Only what the quantized output needs is fetched (see [`select`]). Downloads resume,
//! are checked against the hub's size and sha256, run several files at once under one
//! progress bar, and finish before quantization starts (the reader mmaps whole shards).
//! `hf-hub` 0.5 was not used: it lacks checksums, offline mode, the `.incomplete` naming,
//! one bar for many files and typed hub errors; `ureq` (which it wraps) is used directly.

mod cache;
mod config;
mod dataset;
mod download;
mod errors;
mod http;
pub mod select;

pub use cache::RepoCache;
pub use config::{HubConfig, DEFAULT_ENDPOINT};
pub use dataset::{list_files, resolve_dataset, resolve_dataset_with};

/// What a repository holds: the Hub serves models and datasets under different URLs
/// (`/api/models/…` vs `/api/datasets/…`, `/{repo}/resolve/…` vs `/datasets/{repo}/resolve/…`)
/// and the cache keeps them in `models--…` vs `datasets--…` folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    /// `models` / `datasets`: the API path segment and the cache folder prefix.
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// `model` / `dataset`, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }

    /// The command-line option that names such a repo.
    pub fn flag(self) -> &'static str {
        match self {
            RepoKind::Model => "--model",
            RepoKind::Dataset => "--dataset",
        }
    }

    /// The repo as it appears in resolve URLs.
    pub fn url_repo(self, repo: &str) -> String {
        match self {
            RepoKind::Model => repo.to_string(),
            RepoKind::Dataset => format!("datasets/{repo}"),
        }
    }
}

use crate::{Error, Result};
use download::{progress_bar, run_parallel, Downloader, Job};
use errors::{Ctx, Failure};
use http::{with_retries, Client};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// How the command line asks for a model.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Branch, tag or commit hash (default `main`).
    pub revision: Option<String>,
    /// Show the download progress bar (drawn only when stderr is a terminal).
    pub progress: bool,
}

/// `model` is a local dir (returned as is) or a repo id "org/name"; downloads what is needed
/// into the HF cache (layout: $HF_HUB_CACHE or $HF_HOME/hub or ~/.cache/huggingface/hub,
/// models--org--name/{blobs,refs,snapshots/<commit>/...}) and returns the snapshot directory,
/// which then looks like a local model dir to the reader.
pub fn resolve_model(model: &str, opts: &HubOptions) -> Result<PathBuf> {
    resolve_model_with(model, opts, &HubConfig::from_env())
}

/// [`resolve_model`] with an explicit configuration instead of the process environment.
pub fn resolve_model_with(model: &str, opts: &HubOptions, config: &HubConfig) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !is_repo_id(model) {
        return Err(Error::Hub(format!(
            "--model {model}: no such directory, and not a Hugging Face repo id (org/name)"
        )));
    }
    let revision = opts.revision.as_deref().unwrap_or("main");
    if !select::is_safe_path(revision) {
        return Err(Error::Hub(format!(
            "--revision '{revision}' is not a valid revision"
        )));
    }
    let cache = RepoCache::new(&config.cache_dir, model);
    if config.offline {
        return from_cache(&cache, revision).map_err(|why| {
            not_local(
                model,
                format!(
                    "offline mode (HF_HUB_OFFLINE=1): the Hub model {model} at revision \
                     '{revision}' {why} in the cache {}; run once with network access, or unset \
                     HF_HUB_OFFLINE",
                    config.cache_dir.display()
                ),
            )
        });
    }
    let ctx = Ctx {
        endpoint: &config.endpoint,
        repo: model,
        kind: RepoKind::Model,
        revision,
        has_token: config.token.is_some(),
        token_source: &config.token_source,
    };
    Fetch {
        client: Client::new(config),
        cache,
        config,
        ctx,
        progress: opts.progress,
    }
    .run()
}

/// One `resolve_model` call against the network.
struct Fetch<'a> {
    client: Client,
    cache: RepoCache,
    config: &'a HubConfig,
    ctx: Ctx<'a>,
    progress: bool,
}

impl Fetch<'_> {
    fn run(&self) -> Result<PathBuf> {
        let (repo, revision) = (self.ctx.repo, self.ctx.revision);
        let retries = self.config.max_retries.min(2);
        let info = match with_retries(retries, || self.client.repo_info(repo, revision)) {
            Ok(info) => info,
            Err(Failure::Network(e)) => return self.fall_back(Failure::Network(e)),
            Err(f) => return Err(self.ctx.error(f, None)),
        };
        let unusable = |why: String| Error::Hub(format!("{repo} at revision '{revision}' {why}"));
        let mut files = select::wanted(&info.files).map_err(unusable)?;
        if files.iter().any(|f| f == select::INDEX) {
            // The index names the shards: fetch it first, quietly.
            self.fetch(&info.commit, &[select::INDEX.to_string()], false)?;
            let index = self.cache.snapshot(&info.commit).join(select::INDEX);
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let shards = select::shards_from_index(&text)
                .map_err(|e| unusable(format!("has a {} that {e}", select::INDEX)))?;
            if let Some(gone) = shards.iter().find(|s| !info.files.contains(s)) {
                return Err(unusable(format!(
                    "lists shard {gone} in its index but lacks the file"
                )));
            }
            files.retain(|f| f != select::INDEX);
            files.extend(shards);
        }
        self.fetch(&info.commit, &files, self.progress)?;
        self.cache.write_ref(revision, &info.commit)?;
        Ok(self.cache.snapshot(&info.commit))
    }

    /// Without network, a complete cached snapshot of the revision is still good (as in
    /// `huggingface_hub`); otherwise the network error stands.
    fn fall_back(&self, failure: Failure) -> Result<PathBuf> {
        match from_cache(&self.cache, self.ctx.revision) {
            Ok(dir) => {
                eprintln!(
                    "qforge: warning: cannot reach {}; using the cached {}",
                    self.ctx.endpoint,
                    dir.display()
                );
                Ok(dir)
            }
            Err(_) => match self.ctx.error(failure, None) {
                Error::Hub(msg) => Err(not_local(
                    self.ctx.repo,
                    format!("the Hub could not be asked for a model of that name: {msg}"),
                )),
                other => Err(other),
            },
        }
    }

    /// Makes `files` present in the snapshot of `commit`, downloading what is missing.
    fn fetch(&self, commit: &str, files: &[String], show: bool) -> Result<()> {
        let todo: Vec<&String> = files
            .iter()
            .filter(|f| !self.cache.has_file(commit, f))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let workers = self.config.workers;
        let cancel = AtomicBool::new(false);
        let jobs = run_parallel(&todo, workers, &cancel, |path| {
            let meta = with_retries(self.config.max_retries, || {
                self.client.file_meta(&self.ctx.url_repo(), commit, path)
            })
            .map_err(|f| self.ctx.error(f, Some(path)))?;
            if meta.commit.as_deref().is_some_and(|c| c != commit) {
                let why = format!("X-Repo-Commit is not the requested commit {commit}");
                return Err(self.ctx.error(Failure::Protocol(why), Some(path)));
            }
            Ok(Job {
                path: path.to_string(),
                meta,
            })
        })?;
        let total = jobs.iter().map(|j| j.meta.size).sum();
        let resumed = jobs
            .iter()
            .map(|j| self.cache.resumable(&j.meta.etag, j.meta.size))
            .sum();
        let label = format!("Downloading {} ({} files)", self.ctx.repo, jobs.len());
        let bar = progress_bar(show, total, resumed, &label);
        let downloader = Downloader {
            client: &self.client,
            cache: &self.cache,
            ctx: &self.ctx,
            commit,
            max_retries: self.config.max_retries,
            bar: &bar,
            cancel: &cancel,
        };
        let result = run_parallel(&jobs, workers, &cancel, |job| downloader.fetch(job));
        bar.finish_and_clear();
        result.map(|_| ())
    }
}

/// The error for a `--model` found neither on disk nor on the Hub: a repo id is also a
/// relative path (`fixtures/tiny-llama`), so a mistyped folder ends here, and the message
/// says both facts.
fn not_local(model: &str, hub_failure: String) -> Error {
    Error::Hub(format!(
        "--model {model}: no such folder, and {hub_failure}"
    ))
}

/// The complete cached snapshot of `revision`, or why there is none.
fn from_cache(cache: &RepoCache, revision: &str) -> std::result::Result<PathBuf, String> {
    let commit = cache
        .cached_commit(revision)
        .ok_or_else(|| "is not".to_string())?;
    let dir = cache.snapshot(&commit);
    let missing = select::missing_locally(&dir);
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!("is incomplete (lacks {})", missing.join(", ")))
    }
}

/// A Hugging Face repo id: `name` or `org/name`, letters, digits, `-`, `_`, `.`, at most 96
/// characters a part, no `--` or `..`, as `huggingface_hub.validate_repo_id` accepts.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && !s.contains("--")
        && !s.contains("..")
        && !s.ends_with(".git")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in [
            "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
            "gpt2",
            "a/b.c_d",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "./model", "/abs/dir", "a/b/c", "out/", "a--b/c", "a/..b", "", "a b/c",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }
}
