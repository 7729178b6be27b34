//! `--dataset org/name` against the mock hub: the dataset card's configs pick the split's
//! files, only those are downloaded, into `datasets--org--name` in the Hugging Face cache;
//! offline mode reads the cache and says when the dataset is not there.

use super::mock::fixtures::config;
use super::mock::{Files, MockHub, MockRepo};
use qforge::checkpoint::hub::{RepoCache, RepoKind};
use qforge::dataset::files::load_rows_with;
use qforge::dataset::{load_calibration_with, CalibrationSpec};
use std::path::PathBuf;

const ID: &str = "org-test/chat-calib";

const CARD: &str =
    "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train_sft\n    \
                    path: data/train_sft-*\n  - split: test_sft\n    path: data/test_sft-*\n---\n\
                    # A chat dataset\n";

fn calib(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/calib"));
    std::fs::read(dir.join(name)).unwrap()
}

fn files() -> Files {
    vec![
        ("README.md".into(), CARD.as_bytes().to_vec()),
        (
            "data/train_sft-00000-of-00001.parquet".into(),
            calib("chat.parquet"),
        ),
        (
            "data/test_sft-00000-of-00001.parquet".into(),
            calib("text.parquet"),
        ),
    ]
}

fn hub() -> (MockHub, String) {
    // Dataset repos are served under `datasets/{id}` (see the mock).
    let (repo, commit) = MockRepo::single(&format!("datasets/{ID}"), files());
    (MockHub::start(vec![repo]), commit)
}

#[test]
fn downloads_the_split_into_the_datasets_cache_folder() {
    let (hub, commit) = hub();
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let rows = load_rows_with(ID, Some("train_sft"), None, &cfg).unwrap();
    assert_eq!(rows.rows.len(), 3);
    assert!(rows.rows[0].contains_key("messages"));
    let cache = RepoCache::of_kind(&cfg.cache_dir, ID, RepoKind::Dataset);
    assert_eq!(
        cache.root(),
        cfg.cache_dir.join("datasets--org-test--chat-calib")
    );
    let snap = cache.snapshot(&commit);
    assert!(snap.join("data/train_sft-00000-of-00001.parquet").is_file());
    assert!(
        !snap.join("data/test_sft-00000-of-00001.parquet").exists(),
        "other split fetched"
    );
    assert_eq!(cache.read_ref("main").as_deref(), Some(commit.as_str()));
    let paths: Vec<String> = hub.log().into_iter().map(|l| l.path).collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/api/datasets/org-test/chat-calib/revision/main")),
        "{paths:?}"
    );

    // The whole calibration path, tokenized with SmolLM2's chat template.
    let spec = CalibrationSpec {
        split: Some("train_sft".into()),
        num_samples: 2,
        ..CalibrationSpec::new(ID)
    };
    let set = load_calibration_with(&spec, &crate::support::fixture("smollm2-meta"), &cfg).unwrap();
    assert_eq!(set.samples.len(), 2);
    assert!(
        set.description.contains("split 'train_sft'"),
        "{}",
        set.description
    );

    // Offline: the cached split is used; another split is not there.
    let mut offline = cfg.clone();
    offline.offline = true;
    hub.clear_log();
    assert_eq!(
        load_rows_with(ID, Some("train_sft"), None, &offline)
            .unwrap()
            .rows,
        rows.rows
    );
    assert!(hub.log().is_empty(), "offline mode asked the hub");
    let err = load_rows_with(ID, Some("nope"), None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no split 'nope'; its splits are: train_sft, test_sft"),
        "{err}"
    );
}

#[test]
fn offline_without_the_dataset_says_so() {
    let (hub, _) = hub();
    let home = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub, home.path());
    cfg.offline = true;
    let err = load_rows_with(ID, Some("train_sft"), None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("offline mode (HF_HUB_OFFLINE=1): the Hub dataset org-test/chat-calib")
            && err.contains("is not in the cache"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

#[test]
fn unknown_dataset_is_named_as_a_dataset() {
    let (hub, _) = hub();
    let home = tempfile::tempdir().unwrap();
    let cfg = config(&hub, home.path());
    let err = load_rows_with("org-test/none", None, None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--dataset org-test/none") && err.contains("not found"),
        "{err}"
    );
}
