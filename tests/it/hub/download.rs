//! `--model org/name` against a mock hub on 127.0.0.1: what is downloaded, where it lands in
//! the Hugging Face cache, revisions, resuming, checksums, and the token's path.

use super::mock::fixtures::{config, fixture_dir, fixture_repo, sharded_commit, sharded_files};
use super::mock::{git_oid, sha256_hex, Access, MockHub, GRANTED_TOKEN};
use crate::support::{self, requires};
use qforge::checkpoint::hub::{resolve_model_with, HubOptions, RepoCache};
use std::path::{Path, PathBuf};

const REPO: &str = "meta-test/tiny-llama3";

/// Fixture files qforge needs (the rest, EDGE_CASES.txt here, stays on the hub).
const NEEDED: &[&str] = &[
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

fn opts(revision: Option<&str>) -> HubOptions {
    HubOptions {
        revision: revision.map(str::to_string),
        progress: false,
    }
}

/// Names in a snapshot directory, recursively, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn blobs(cache: &RepoCache) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.root().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_same_as_fixture(snapshot: &Path, names: &[&str]) {
    for name in names {
        let got = std::fs::read(snapshot.join(name)).unwrap();
        let want = std::fs::read(fixture_dir().join(name)).unwrap();
        assert!(got == want, "{name} differs from the fixture");
    }
}

#[test]
fn downloads_only_what_is_needed_into_the_hf_cache_layout() {
    let (repo, commit) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let snapshot = resolve_model_with(REPO, &opts(None), &cfg).unwrap();

    let cache = RepoCache::new(&cfg.cache_dir, REPO);
    assert_eq!(snapshot, cache.snapshot(&commit));
    assert_eq!(listing(&snapshot), NEEDED);
    assert_same_as_fixture(&snapshot, NEEDED);

    // huggingface_hub's layout: refs/main holds the commit; snapshot entries are relative
    // symlinks to blobs named by sha256 (LFS) or git blob id (regular files).
    let main = std::fs::read_to_string(cache.root().join("refs/main")).unwrap();
    assert_eq!(main, commit);
    let weights = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(
        link,
        PathBuf::from(format!("../../blobs/{}", sha256_hex(&weights)))
    );
    let config_json = std::fs::read(fixture_dir().join("config.json")).unwrap();
    let link = std::fs::read_link(snapshot.join("config.json")).unwrap();
    assert_eq!(
        link,
        PathBuf::from(format!("../../blobs/{}", git_oid(&config_json)))
    );
    assert_eq!(blobs(&cache).len(), NEEDED.len(), "{:?}", blobs(&cache));
    assert!(!blobs(&cache).iter().any(|b| b.ends_with(".incomplete")));

    // Skipped files were never even asked for.
    for log in hub.log() {
        for skipped in [".bin", ".pth", ".gguf", "README", "EDGE_CASES"] {
            assert!(!log.path.contains(skipped), "requested {}", log.path);
        }
    }
}

#[test]
fn warm_cache_costs_one_request_and_python_made_caches_are_used() {
    let (repo, commit) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let first = resolve_model_with(REPO, &opts(None), &cfg).unwrap();
    hub.clear_log();
    let second = resolve_model_with(REPO, &opts(None), &cfg).unwrap();
    assert_eq!(first, second);
    let log = hub.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].path, format!("/api/models/{REPO}/revision/main"));

    // A cache laid out by hand the way Python's huggingface_hub writes it.
    let py_home = tempfile::tempdir().unwrap();
    let py_cfg = config(&hub, py_home.path());
    let root = py_cfg.cache_dir.join("models--meta-test--tiny-llama3");
    let snap = root.join("snapshots").join(&commit);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(root.join("refs/main"), &commit).unwrap();
    for name in NEEDED {
        let bytes = std::fs::read(fixture_dir().join(name)).unwrap();
        let etag = if name.ends_with(".safetensors") || *name == "tokenizer.json" {
            sha256_hex(&bytes)
        } else {
            git_oid(&bytes)
        };
        std::fs::write(root.join("blobs").join(&etag), &bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(name)).unwrap();
    }
    hub.clear_log();
    let got = resolve_model_with(REPO, &opts(None), &py_cfg).unwrap();
    assert_eq!(got, snap);
    assert_eq!(hub.log().len(), 1, "{:?}", hub.log());
}

#[test]
fn revision_by_tag_pr_ref_and_commit_uses_the_index() {
    let (mut repo, main_commit) = fixture_repo(REPO, Access::Public);
    let v1 = sharded_commit(REPO);
    let shard_files = sharded_files();
    repo.commits.push((v1.clone(), shard_files.clone()));
    repo.refs.push(("v1".into(), v1.clone()));
    repo.refs.push(("refs/pr/1".into(), v1.clone()));
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let cache = RepoCache::new(&cfg.cache_dir, REPO);

    let snapshot = resolve_model_with(REPO, &opts(Some("v1")), &cfg).unwrap();
    assert_eq!(snapshot, cache.snapshot(&v1));
    assert_ne!(v1, main_commit);
    let expected: Vec<&str> = vec![
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    assert_eq!(
        listing(&snapshot),
        expected,
        "consolidated.safetensors must be skipped"
    );
    for (name, bytes) in &shard_files {
        if expected.contains(&name.as_str()) {
            assert!(
                &std::fs::read(snapshot.join(name)).unwrap() == bytes,
                "{name}"
            );
        }
    }
    assert_eq!(cache.read_ref("v1").as_deref(), Some(v1.as_str()));
    assert_eq!(cache.read_ref("main"), None);

    // A PR ref is quoted in URLs and nested under refs/ in the cache.
    let pr = resolve_model_with(REPO, &opts(Some("refs/pr/1")), &cfg).unwrap();
    assert_eq!(pr, snapshot);
    assert!(hub
        .log()
        .iter()
        .any(|l| l.path.ends_with("/revision/refs%2Fpr%2F1")));
    assert_eq!(cache.read_ref("refs/pr/1").as_deref(), Some(v1.as_str()));

    // A commit hash: same snapshot, no ref file named after the hash.
    let by_hash = resolve_model_with(REPO, &opts(Some(&v1)), &cfg).unwrap();
    assert_eq!(by_hash, snapshot);
    assert!(!cache.root().join("refs").join(&v1).exists());
    let main = resolve_model_with(REPO, &opts(None), &cfg).unwrap();
    assert_eq!(main, cache.snapshot(&main_commit));
    assert_same_as_fixture(&main, NEEDED);
}

#[test]
fn dropped_connection_resumes_with_a_range_request() {
    let (repo, _) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let weights = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let sha = sha256_hex(&weights);
    hub.cut(&sha, 1_000_000, 1);
    let home = tempfile::tempdir().unwrap();
    let snapshot = resolve_model_with(REPO, &opts(None), &config(&hub, home.path())).unwrap();
    assert_same_as_fixture(&snapshot, NEEDED);
    let ranges: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.server == "cdn" && l.path.contains(&sha))
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=1000000-".into())]);
}

#[test]
fn interrupted_download_resumes_on_the_next_run() {
    let (repo, commit) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let weights = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let sha = sha256_hex(&weights);
    hub.cut(&sha, 2_500_000, 1);
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub, home.path());
    cfg.max_retries = 0;
    let err = resolve_model_with(REPO, &opts(None), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("network error") && err.contains("model.safetensors"),
        "{err}"
    );
    assert!(err.contains("run again to resume"), "{err}");

    // The cache is consistent: a resumable partial blob, no blob, link or ref for it.
    let cache = RepoCache::new(&cfg.cache_dir, REPO);
    let part = std::fs::metadata(cache.incomplete(&sha)).unwrap();
    assert_eq!(part.len(), 2_500_000);
    assert!(!cache.blob(&sha).exists());
    assert!(!cache.snapshot(&commit).join("model.safetensors").exists());
    assert_eq!(cache.read_ref("main"), None);

    hub.clear_log();
    let snapshot = resolve_model_with(REPO, &opts(None), &cfg).unwrap();
    assert_same_as_fixture(&snapshot, NEEDED);
    let resumed = hub
        .log()
        .into_iter()
        .find(|l| l.server == "cdn" && l.path.contains(&sha))
        .unwrap();
    assert_eq!(resumed.range.as_deref(), Some("bytes=2500000-"));
    assert!(!cache.incomplete(&sha).exists());
}

#[test]
fn corrupt_download_is_rejected_and_removed() {
    let (repo, _) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let weights = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let sha = sha256_hex(&weights);
    hub.corrupt(&sha);
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let err = resolve_model_with(REPO, &opts(None), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt") && err.contains(&format!("instead of {sha}")),
        "{err}"
    );
    let cache = RepoCache::new(&cfg.cache_dir, REPO);
    assert!(!cache.blob(&sha).exists() && !cache.incomplete(&sha).exists());

    hub.heal();
    let snapshot = resolve_model_with(REPO, &opts(None), &cfg).unwrap();
    assert_same_as_fixture(&snapshot, NEEDED);
}

#[test]
fn token_goes_to_the_hub_but_not_to_the_cdn() {
    let (repo, _) = fixture_repo("meta-test/private", Access::Private);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub, home.path());
    cfg.token = Some(GRANTED_TOKEN.into());
    let snapshot = resolve_model_with("meta-test/private", &opts(None), &cfg).unwrap();
    assert_same_as_fixture(&snapshot, NEEDED);
    let log = hub.log();
    let bearer = format!("Bearer {GRANTED_TOKEN}");
    assert!(log.iter().any(|l| l.server == "cdn"));
    for l in &log {
        match l.server {
            "hub" => assert_eq!(l.auth.as_deref(), Some(bearer.as_str()), "{}", l.path),
            _ => assert_eq!(l.auth, None, "{}", l.path),
        }
    }
}

#[test]
fn a_local_directory_is_returned_as_is() {
    let dir = fixture_dir();
    let mut cfg = qforge::checkpoint::hub::HubConfig::from_lookup(|_| None);
    cfg.endpoint = "http://127.0.0.1:9".into();
    let got = resolve_model_with(dir.to_str().unwrap(), &opts(None), &cfg).unwrap();
    assert_eq!(got, dir);
}

/// Needs a small filesystem (a few MB, e.g. `mount -t tmpfs -o size=3m tmpfs /mnt/small`) in
/// `QFORGE_SMALL_FS`; .ci/run mounts one. Ignored without it.
#[requires(small_fs)]
#[test]
fn disk_full_says_so_and_keeps_the_cache_consistent() {
    let small = support::small_fs();
    let (repo, commit) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir_in(small).unwrap();
    let cfg = config(&hub, home.path());
    let err = resolve_model_with(REPO, &opts(None), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no space left on device"), "{err}");
    assert!(err.contains("HF_HUB_CACHE"), "{err}");
    let cache = RepoCache::new(&cfg.cache_dir, REPO);
    let weights = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let sha = sha256_hex(&weights);
    assert!(!cache.blob(&sha).exists());
    assert!(!cache.snapshot(&commit).join("model.safetensors").exists());
    assert_eq!(cache.read_ref("main"), None);
    // Every link in the snapshot leads to a complete blob.
    for name in listing(&cache.snapshot(&commit)) {
        let want = std::fs::read(fixture_dir().join(&name)).unwrap();
        assert!(std::fs::read(cache.snapshot(&commit).join(&name)).unwrap() == want);
    }
}
