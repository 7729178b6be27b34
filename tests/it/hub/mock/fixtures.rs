//! Repos for the mock hub, built from the shared fixture checkpoint, and a per-test config.

use super::{fake_commit, Access, Files, MockHub, MockRepo};
use qforge::checkpoint::hub::HubConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fixture qforge quantizes in its other tests.
pub fn fixture_dir() -> PathBuf {
    crate::support::shared().join("fixtures/tiny-llama3-bf16")
}

/// Every file of the fixture directory.
pub fn fixture_files() -> Files {
    let mut files: Files = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// What real repos carry beside the files qforge needs.
pub fn extras() -> Files {
    [
        (
            ".gitattributes",
            "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        ),
        ("README.md", "# tiny llama\n"),
        ("pytorch_model.bin", "not really a pickle"),
        ("original/consolidated.00.pth", "meta checkpoint"),
        ("original/tokenizer.model", "sentencepiece"),
        ("model-q4.gguf", "GGUF"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
    .collect()
}

/// The fixture split in two shards with an index, as `save_pretrained` shards it, plus a
/// Mistral-style `consolidated.safetensors` that the index does not name.
pub fn sharded_files() -> Files {
    let weights = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut names: Vec<String> = st.names().iter().map(|s| s.to_string()).collect();
    names.sort();
    let half = names.len() / 2;
    let mut files: Files = fixture_files()
        .into_iter()
        .filter(|(n, _)| n != "model.safetensors")
        .collect();
    let mut weight_map = serde_json::Map::new();
    for (i, group) in [&names[..half], &names[half..]].iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<_> = group
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        for n in group.iter() {
            weight_map.insert(n.clone(), shard.clone().into());
        }
        files.push((shard, bytes));
    }
    let index = serde_json::json!({ "metadata": { "total_size": weights.len() }, "weight_map": weight_map });
    files.push((
        "model.safetensors.index.json".into(),
        serde_json::to_vec_pretty(&index).unwrap(),
    ));
    files.push((
        "consolidated.safetensors".into(),
        b"mistral-format".to_vec(),
    ));
    files
}

/// A public repo with the fixture (and the usual extras) on `main`.
pub fn fixture_repo(id: &str, access: Access) -> (MockRepo, String) {
    let (mut repo, commit) = MockRepo::single(id, [fixture_files(), extras()].concat());
    repo.access = access;
    (repo, commit)
}

/// A configuration that reads no environment: its own cache, the mock endpoint, no token.
pub fn config(hub: &MockHub, home: &Path) -> HubConfig {
    let mut c = HubConfig::from_lookup(|_| None);
    c.cache_dir = home.join("hub");
    c.endpoint = hub.endpoint();
    c.token = None;
    c.token_source = "HF_TOKEN".into();
    c.offline = false;
    c.max_retries = 3;
    c.timeout = Duration::from_secs(5);
    c
}

/// The commit hash for the sharded layout.
pub fn sharded_commit(id: &str) -> String {
    fake_commit(&format!("{id}@v1"))
}
