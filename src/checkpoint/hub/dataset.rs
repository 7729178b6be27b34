//! Hub dataset repos (`--dataset org/name`), fetched into the same cache as models, in
//! `datasets--org--name` folders (as `huggingface_hub.snapshot_download(repo_type="dataset")`
//! lays them out), with the same token, endpoint, offline mode, resume and checksums. Only the
//! files the caller picks from the listing (a split's data files) are downloaded.

use super::errors::{Ctx, Failure};
use super::http::{with_retries, Client};
use super::{select, Fetch, HubConfig, HubOptions, RepoCache, RepoKind};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Picks the files to use from the repo's listing, given its `README.md` text (where the
/// dataset card declares its configs and splits).
pub type Pick<'a> = dyn Fn(&[String], Option<&str>) -> Result<Vec<String>> + 'a;

const README: &str = "README.md";

/// Downloads what `pick` chooses from dataset repo `id` into the Hugging Face cache; returns
/// the snapshot folder and the chosen files (relative to it).
pub fn resolve_dataset(id: &str, opts: &HubOptions, pick: &Pick) -> Result<(PathBuf, Vec<String>)> {
    resolve_dataset_with(id, opts, &HubConfig::from_env(), pick)
}

/// [`resolve_dataset`] with an explicit configuration instead of the process environment.
pub fn resolve_dataset_with(
    id: &str,
    opts: &HubOptions,
    config: &HubConfig,
    pick: &Pick,
) -> Result<(PathBuf, Vec<String>)> {
    let revision = opts.revision.as_deref().unwrap_or("main");
    if !select::is_safe_path(revision) {
        return Err(Error::Hub(format!(
            "--revision '{revision}' is not a valid revision"
        )));
    }
    let cache = RepoCache::of_kind(&config.cache_dir, id, RepoKind::Dataset);
    if config.offline {
        return from_cache(&cache, revision, pick).map_err(|why| {
            Error::Hub(format!(
                "offline mode (HF_HUB_OFFLINE=1): the Hub dataset {id} at revision '{revision}' \
                 {why} in the cache {}; run once with network access, or unset HF_HUB_OFFLINE",
                config.cache_dir.display()
            ))
        });
    }
    let ctx = Ctx {
        endpoint: &config.endpoint,
        repo: id,
        kind: RepoKind::Dataset,
        revision,
        has_token: config.token.is_some(),
        token_source: &config.token_source,
    };
    let fetch = Fetch {
        client: Client::new(config),
        cache,
        config,
        ctx,
        progress: opts.progress,
    };
    run(&fetch, pick)
}

fn run(fetch: &Fetch, pick: &Pick) -> Result<(PathBuf, Vec<String>)> {
    let (repo, revision) = (fetch.ctx.repo, fetch.ctx.revision);
    let retries = fetch.config.max_retries.min(2);
    let info = match with_retries(retries, || {
        fetch.client.repo_info_of(RepoKind::Dataset, repo, revision)
    }) {
        Ok(info) => info,
        Err(Failure::Network(e)) => {
            return from_cache(&fetch.cache, revision, pick)
                .map_err(|_| fetch.ctx.error(Failure::Network(e), None))
        }
        Err(f) => return Err(fetch.ctx.error(f, None)),
    };
    let readme = if info.files.iter().any(|f| f == README) {
        fetch.fetch(&info.commit, &[README.to_string()], false)?;
        let path = fetch.cache.snapshot(&info.commit).join(README);
        Some(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?)
    } else {
        None
    };
    let files = pick(&info.files, readme.as_deref())?;
    if let Some(bad) = files.iter().find(|f| !select::is_safe_path(f)) {
        return Err(Error::Hub(format!(
            "{repo}: unsafe file name in the listing: {bad}"
        )));
    }
    fetch.fetch(&info.commit, &files, fetch.progress)?;
    fetch.cache.write_ref(revision, &info.commit)?;
    Ok((fetch.cache.snapshot(&info.commit), files))
}

/// The cached snapshot of `revision` with every picked file present, or why there is none.
fn from_cache(
    cache: &RepoCache,
    revision: &str,
    pick: &Pick,
) -> std::result::Result<(PathBuf, Vec<String>), String> {
    let commit = cache
        .cached_commit(revision)
        .ok_or_else(|| "is not".to_string())?;
    let dir = cache.snapshot(&commit);
    let listing = list_files(&dir).map_err(|e| format!("cannot be listed ({e})"))?;
    let readme = std::fs::read_to_string(dir.join(README)).ok();
    let files = pick(&listing, readme.as_deref()).map_err(|e| format!("is unusable ({e})"))?;
    Ok((dir, files))
}

/// Every regular file under `dir` (following the cache's symlinks), relative, with `/`
/// separators, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        if path.is_dir() {
            walk(&path, &format!("{rel}/"), out)?;
        } else if path.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}
