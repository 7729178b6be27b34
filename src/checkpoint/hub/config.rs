//! Where the hub and its cache are, and who we are: read from the same environment variables
//! as Python's `huggingface_hub`, so both tools share one cache and one login.

use std::path::PathBuf;
use std::time::Duration;

/// The public hub; `HF_ENDPOINT` overrides it (mirrors, a test server).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Everything the download code needs to know about its surroundings. Build it with
/// [`HubConfig::from_env`] and override fields as needed; nothing below reads the environment,
/// so tests can run side by side with their own cache, endpoint, token and offline flag.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub cache (`models--org--name/{blobs,refs,snapshots}` live here).
    pub cache_dir: PathBuf,
    /// Base URL of the hub, without a trailing slash.
    pub endpoint: String,
    /// Bearer token (`HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// Where the token came from, for error messages.
    pub token_source: String,
    /// `HF_HUB_OFFLINE`: use the cache only, never touch the network.
    pub offline: bool,
    /// How many times one file download resumes after a dropped connection.
    pub max_retries: u32,
    /// Files downloaded at the same time.
    pub workers: usize,
    /// Connect timeout and the longest silence tolerated while reading.
    pub timeout: Duration,
}

impl HubConfig {
    /// Reads the process environment (see [`HubConfig::from_lookup`]).
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the configuration from a variable lookup, with `huggingface_hub`'s rules:
    /// `HF_HOME` (default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`);
    /// cache `HF_HUB_CACHE` (legacy `HUGGINGFACE_HUB_CACHE`, default `$HF_HOME/hub`);
    /// token `HF_TOKEN` (legacy `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`
    /// (default `$HF_HOME/token`); `HF_ENDPOINT`; `HF_HUB_OFFLINE` (1/true/yes/on);
    /// `HF_HUB_DOWNLOAD_TIMEOUT` in seconds (default 10).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let xdg = var("XDG_CACHE_HOME").map(PathBuf::from);
            let home = var("HOME").unwrap_or_else(|| ".".into());
            xdg.unwrap_or_else(|| PathBuf::from(home).join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let (token, token_source) = read_token(&var, &hf_home);
        let timeout = var("HF_HUB_DOWNLOAD_TIMEOUT")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(10.0);
        HubConfig {
            cache_dir,
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            token,
            token_source,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v)),
            max_retries: 5,
            workers: 8,
            timeout: Duration::from_secs_f64(timeout),
        }
    }
}

/// `huggingface_hub`'s notion of a true flag.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// The token and a description of where it came from.
fn read_token(
    var: &impl Fn(&str) -> Option<String>,
    hf_home: &std::path::Path,
) -> (Option<String>, String) {
    for key in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(token) = var(key) {
            return (Some(token.trim().to_string()), key.to_string());
        }
    }
    let path = var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home.join("token"));
    let token = std::fs::read_to_string(&path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    (token, path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> HubConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_home() {
        let c = config(&[("HOME", "/home/u")]);
        assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert!(!c.offline);
        assert_eq!(c.token, None);
        assert_eq!(c.token_source, "/home/u/.cache/huggingface/token");
    }

    #[test]
    fn hub_cache_beats_hf_home() {
        let c = config(&[("HF_HOME", "/h"), ("HF_HUB_CACHE", "/c")]);
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        let c = config(&[("HF_HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(c.cache_dir, PathBuf::from("/h/hub"));
        let c = config(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/home/u")]);
        assert_eq!(c.cache_dir, PathBuf::from("/x/huggingface/hub"));
    }

    #[test]
    fn endpoint_offline_and_timeout() {
        let c = config(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "True"),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "2.5"),
        ]);
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert!(c.offline);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(!config(&[("HF_HUB_OFFLINE", "0")]).offline);
    }

    #[test]
    fn token_from_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        let c = config(&[("HF_HOME", home)]);
        assert_eq!(c.token.as_deref(), Some("hf_file"));
        let c = config(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]);
        assert_eq!(c.token.as_deref(), Some("hf_env"));
        assert_eq!(c.token_source, "HF_TOKEN");
    }
}
