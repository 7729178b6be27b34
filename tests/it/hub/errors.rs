//! Hub failures a user meets, each with a message that says what to do: gated/private repos,
//! unknown repos and revisions, a bad token, no network, offline mode with and without a
//! cache, and repos qforge cannot use.

use super::mock::fixtures::{config, fixture_repo};
use super::mock::{Access, MockHub, MockRepo, GRANTED_TOKEN, OTHER_TOKEN};
use qforge::checkpoint::hub::{resolve_model_with, HubConfig, HubOptions, RepoCache};
use std::path::Path;

const REPO: &str = "meta-test/tiny-llama3";

fn opts(revision: Option<&str>) -> HubOptions {
    HubOptions {
        revision: revision.map(str::to_string),
        progress: false,
    }
}

fn error_of(model: &str, revision: Option<&str>, cfg: &HubConfig) -> String {
    match resolve_model_with(model, &opts(revision), cfg) {
        Ok(dir) => panic!("expected an error, got {}", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// An endpoint where nothing listens.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[test]
fn gated_repo_asks_for_the_licence_and_a_token() {
    let (repo, _) = fixture_repo("meta-test/gated", Access::Gated);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub, home.path());
    let err = error_of("meta-test/gated", None, &cfg);
    assert!(err.contains("meta-test/gated is gated (401"), "{err}");
    assert!(
        err.contains("accept its licence") && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert!(err.contains("no token is set"), "{err}");

    cfg.token = Some(OTHER_TOKEN.into());
    let err = error_of("meta-test/gated", None, &cfg);
    assert!(
        err.contains("is gated (403") && err.contains("has no access"),
        "{err}"
    );

    cfg.token = Some(GRANTED_TOKEN.into());
    assert!(resolve_model_with("meta-test/gated", &opts(None), &cfg).is_ok());
}

#[test]
fn unknown_repo_private_repo_and_bad_token() {
    let (repo, _) = fixture_repo("meta-test/private", Access::Private);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub, home.path());
    for name in ["meta-test/nope", "meta-test/private"] {
        let err = error_of(name, None, &cfg);
        assert!(
            err.contains(&format!("repository {name} not found")),
            "{err}"
        );
        assert!(err.contains("(401)") && err.contains("HF_TOKEN"), "{err}");
    }
    cfg.token = Some(OTHER_TOKEN.into());
    let err = error_of("meta-test/nope", None, &cfg);
    assert!(
        err.contains("repository meta-test/nope not found") && err.contains("(404)"),
        "{err}"
    );
    cfg.token = Some("hf_expired".into());
    let err = error_of("meta-test/private", None, &cfg);
    assert!(
        err.contains("token from HF_TOKEN is invalid or expired"),
        "{err}"
    );
}

#[test]
fn unknown_revision_is_named() {
    let (repo, _) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let err = error_of(REPO, Some("v9"), &config(&hub, home.path()));
    assert!(
        err.contains(&format!("revision 'v9' not found in {REPO}")),
        "{err}"
    );
}

#[test]
fn no_network_says_so_and_falls_back_to_a_complete_cache() {
    let (repo, commit) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub, home.path());
    cfg.endpoint = dead_endpoint();
    let err = error_of(REPO, None, &cfg);
    assert!(
        err.contains("network error") && err.contains(&cfg.endpoint),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");

    let online = config(&hub, home.path());
    resolve_model_with(REPO, &opts(None), &online).unwrap();
    let got = resolve_model_with(REPO, &opts(None), &cfg).unwrap();
    assert_eq!(got, RepoCache::new(&cfg.cache_dir, REPO).snapshot(&commit));
}

#[test]
fn offline_mode_uses_the_cache_only() {
    let (repo, commit) = fixture_repo(REPO, Access::Public);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let mut offline = config(&hub, home.path());
    offline.offline = true;

    // Cold cache: a clear error, and no request at all.
    let err = error_of(REPO, None, &offline);
    assert!(err.contains("offline mode (HF_HUB_OFFLINE=1)"), "{err}");
    assert!(
        err.contains(&format!("{REPO} at revision 'main' is not in the cache")),
        "{err}"
    );
    assert!(
        err.contains(&offline.cache_dir.display().to_string()),
        "{err}"
    );
    assert!(hub.log().is_empty());

    // Warm cache: the snapshot, still without a request.
    let snapshot = resolve_model_with(REPO, &opts(None), &config(&hub, home.path())).unwrap();
    hub.clear_log();
    assert_eq!(
        resolve_model_with(REPO, &opts(None), &offline).unwrap(),
        snapshot
    );
    assert_eq!(
        resolve_model_with(REPO, &opts(Some(&commit)), &offline).unwrap(),
        snapshot
    );
    let err = error_of(REPO, Some("v1"), &offline);
    assert!(err.contains("revision 'v1' is not in the cache"), "{err}");

    // A snapshot missing its weights is reported as incomplete.
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let err = error_of(REPO, None, &offline);
    assert!(err.contains("is incomplete (lacks *.safetensors)"), "{err}");
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[test]
fn unusable_inputs_are_explained() {
    let files = vec![
        ("config.json".to_string(), b"{}".to_vec()),
        ("pytorch_model.bin".to_string(), b"pickle".to_vec()),
    ];
    let (repo, _) = MockRepo::single("meta-test/bin-only", files);
    let hub = MockHub::start(vec![repo]);
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let err = error_of("meta-test/bin-only", None, &cfg);
    assert!(
        err.contains("has no *.safetensors weights (only PyTorch *.bin"),
        "{err}"
    );

    let missing = Path::new("./no/such/dir");
    let err = error_of(missing.to_str().unwrap(), None, &cfg);
    assert!(
        err.contains("no such directory, and not a Hugging Face repo id"),
        "{err}"
    );
    let err = error_of(REPO, Some("../x"), &cfg);
    assert!(err.contains("not a valid revision"), "{err}");
}
