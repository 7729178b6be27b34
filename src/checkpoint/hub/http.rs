//! The three requests qforge makes to a hub, over `ureq`: the repo listing
//! (`/api/models/{repo}/revision/{rev}`), file metadata (HEAD on `/resolve/`, redirects off,
//! as `huggingface_hub.get_hf_file_metadata` does) and ranged GETs that follow the LFS redirect
//! to the CDN without taking the token along.

use super::config::HubConfig;
use super::errors::Failure;
use std::time::Duration;
use ureq::http::{HeaderMap, Uri};
use ureq::Agent;

type Request = ureq::RequestBuilder<ureq::typestate::WithoutBody>;
type Response = ureq::http::Response<ureq::Body>;

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Largest API answer read (the file listing of a big repo is well under this).
const MAX_JSON: u64 = 64 << 20;

/// A repository at one revision: its commit and file list.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub commit: String,
    pub files: Vec<String>,
}

/// What the hub says about one file: the blob name, the real (LFS) size, the commit.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub etag: String,
    pub size: u64,
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Get,
    Head,
}

/// An open GET: where the body starts in the file, and the body.
pub struct Ranged {
    /// 200, 206, or 416 (the range starts at or past the end).
    pub status: u16,
    /// Offset in the file of the first body byte.
    pub start: u64,
    pub body: ureq::BodyReader<'static>,
}

/// A hub connection: one agent (connection pool) shared by all download threads.
#[derive(Debug, Clone)]
pub struct Client {
    agent: Agent,
    endpoint: String,
    token: Option<String>,
}

impl Client {
    /// An agent with the configured timeouts; the environment's proxy is used except for a
    /// loopback endpoint (a local mirror or test server is never behind a proxy).
    pub fn new(config: &HubConfig) -> Self {
        let mut builder = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .accept_encoding("identity")
            .user_agent(concat!("qforge/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(config.timeout))
            .timeout_per_read(Some(config.timeout));
        if is_loopback(&config.endpoint) {
            builder = builder.proxy(None);
        }
        Client {
            agent: builder.build().into(),
            endpoint: config.endpoint.clone(),
            token: config.token.clone(),
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{path}`, quoted as `hf_hub_url` does.
    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> String {
        let (rev, path) = (quote(revision, false), quote(path, true));
        format!("{}/{repo}/resolve/{rev}/{path}", self.endpoint)
    }

    /// The commit a revision points to and the repository's file list.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, Failure> {
        self.repo_info_of(super::RepoKind::Model, repo, revision)
    }

    /// [`Client::repo_info`] of a model or a dataset repo.
    pub fn repo_info_of(
        &self,
        kind: super::RepoKind,
        repo: &str,
        revision: &str,
    ) -> Result<RepoInfo, Failure> {
        let url = format!(
            "{}/api/{}/{repo}/revision/{}",
            self.endpoint,
            kind.plural(),
            quote(revision, false)
        );
        let response = check_status(self.follow(&url, Method::Get, 0)?)?;
        let text = response
            .into_body()
            .with_config()
            .limit(MAX_JSON)
            .read_to_string()
            .map_err(|e| Failure::Network(e.to_string()))?;
        parse_repo_info(&text)
    }

    /// HEAD on the file's resolve URL, following only relative redirects (a renamed repo),
    /// not the LFS redirect to the CDN: its headers carry the LFS sha256 and size.
    pub fn file_meta(&self, repo: &str, commit: &str, path: &str) -> Result<FileMeta, Failure> {
        let url = self.resolve_url(repo, commit, path);
        let response = self.follow(&url, Method::Head, 0)?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            meta_from_headers(response.headers())
        } else {
            Err(status_failure(response))
        }
    }

    /// GET from byte `start` on, following redirects; the token goes only to the endpoint.
    pub fn get_from(&self, url: &str, start: u64) -> Result<Ranged, Failure> {
        let response = self.follow(url, Method::Get, start)?;
        let status = response.status().as_u16();
        if status == 416 {
            let body = response.into_body().into_reader();
            return Ok(Ranged {
                status,
                start,
                body,
            });
        }
        let response = check_status(response)?;
        let begin = match status {
            206 => range_start(response.headers())?,
            _ => 0,
        };
        let body = response.into_body().into_reader();
        Ok(Ranged {
            status,
            start: begin,
            body,
        })
    }

    /// Sends, following redirects by hand (so the token never leaves the endpoint's origin);
    /// a HEAD follows only relative ones, as `huggingface_hub` does.
    fn follow(&self, url: &str, method: Method, start: u64) -> Result<Response, Failure> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = match method {
                Method::Get => self.agent.get(&url),
                Method::Head => self.agent.head(&url),
            };
            if start > 0 {
                request = request.header("Range", format!("bytes={start}-"));
            }
            let response = self.send(request, &url)?;
            let location = header(response.headers(), "location");
            match location {
                Some(loc)
                    if response.status().is_redirection()
                        && (method == Method::Get || loc.starts_with('/')) =>
                {
                    url = join(&url, &loc);
                }
                _ => return Ok(response),
            }
        }
        Err(Failure::Protocol(format!("too many redirects for {url}")))
    }

    /// Adds the token for requests to the endpoint itself, and sends.
    fn send(&self, mut request: Request, url: &str) -> Result<Response, Failure> {
        if let Some(token) = &self.token {
            if origin(url) == origin(&self.endpoint) {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
        }
        request.call().map_err(|e| Failure::Network(e.to_string()))
    }
}

/// Ok for 2xx; otherwise the failure [`status_failure`] describes.
fn check_status(response: Response) -> Result<Response, Failure> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(status_failure(response))
    }
}

/// The status with the hub's error headers (or the JSON body's `error` field).
fn status_failure(response: Response) -> Failure {
    let code = response.status().as_u16();
    let error_code = header(response.headers(), "x-error-code");
    let mut message = header(response.headers(), "x-error-message");
    if message.is_none() {
        let text = response
            .into_body()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string));
    }
    Failure::Status {
        code,
        error_code,
        message,
    }
}

fn parse_repo_info(text: &str) -> Result<RepoInfo, Failure> {
    let bad = |why: &str| Failure::Protocol(format!("repo listing {why}"));
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(&format!("is not JSON ({e})")))?;
    let commit = value
        .get("sha")
        .and_then(|s| s.as_str())
        .filter(|s| super::cache::is_commit_hash(s))
        .ok_or_else(|| bad("has no commit hash (sha)"))?;
    let siblings = value
        .get("siblings")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad("has no file list (siblings)"))?;
    let files = siblings
        .iter()
        .filter_map(|s| s.get("rfilename")?.as_str())
        .map(str::to_string)
        .collect();
    Ok(RepoInfo {
        commit: commit.to_string(),
        files,
    })
}

/// Etag (`X-Linked-Etag` for LFS files, else `ETag`), size (`X-Linked-Size`, else
/// `Content-Length`) and `X-Repo-Commit`, as `get_hf_file_metadata` reads them.
fn meta_from_headers(headers: &HeaderMap) -> Result<FileMeta, Failure> {
    let etag = header(headers, "x-linked-etag")
        .or_else(|| header(headers, "etag"))
        .map(|e| normalize_etag(&e))
        .ok_or_else(|| Failure::Protocol("no ETag header".into()))?;
    if etag.is_empty()
        || etag.len() > 128
        || !etag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Failure::Protocol(format!("unusable ETag '{etag}'")));
    }
    let size = header(headers, "x-linked-size")
        .or_else(|| header(headers, "content-length"))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| Failure::Protocol("no file size (X-Linked-Size/Content-Length)".into()))?;
    let commit = header(headers, "x-repo-commit");
    Ok(FileMeta { etag, size, commit })
}

/// `W/"abc"` or `"abc"` → `abc`.
pub fn normalize_etag(etag: &str) -> String {
    let etag = etag.trim();
    etag.strip_prefix("W/")
        .unwrap_or(etag)
        .trim_matches('"')
        .to_string()
}

/// The first byte offset of a 206 answer's `Content-Range: bytes S-E/T`.
fn range_start(headers: &HeaderMap) -> Result<u64, Failure> {
    header(headers, "content-range")
        .and_then(|r| {
            let spec = r.trim().strip_prefix("bytes ")?;
            spec.split('-').next()?.trim().parse().ok()
        })
        .ok_or_else(|| Failure::Protocol("206 answer without a valid Content-Range".into()))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `scheme://host:port` of a URL (empty if it does not parse).
fn origin(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return String::new();
    };
    let scheme = uri.scheme_str().unwrap_or("");
    let port = uri
        .port_u16()
        .or(match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        })
        .unwrap_or(0);
    format!("{scheme}://{}:{port}", uri.host().unwrap_or(""))
}

/// Resolves a `Location` against the URL that answered it.
fn join(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let Ok(uri) = base.parse::<Uri>() else {
        return location.to_string();
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let scheme = uri.scheme_str().unwrap_or("https");
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
}

fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    matches!(
        uri.host(),
        Some("127.0.0.1") | Some("localhost") | Some("[::1]") | Some("::1")
    )
}

/// Percent-encodes all but RFC 3986 unreserved characters (and `/` when `keep_slash`), like
/// Python's `urllib.parse.quote` used by `hf_hub_url`.
pub fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `call` again on a transient failure (network, 429, 5xx), `retries` times at most.
pub fn with_retries<T>(retries: u32, call: impl Fn() -> Result<T, Failure>) -> Result<T, Failure> {
    let mut attempt = 0;
    loop {
        match call() {
            Err(f) if f.is_transient() && attempt < retries => {
                attempt += 1;
                std::thread::sleep(backoff(attempt));
            }
            other => return other,
        }
    }
}

/// Sleep before retry `attempt` (1-based): 0.25 s doubling, at most 4 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.clamp(1, 5).saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers() {
        assert_eq!(quote("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(quote("a b/c.json", true), "a%20b/c.json");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(
            join("http://h:1/org/m/resolve/main/x", "/org/n/resolve/main/x"),
            "http://h:1/org/n/resolve/main/x"
        );
        assert_eq!(
            join("http://h:1/a", "https://cdn/b?x=1"),
            "https://cdn/b?x=1"
        );
        assert_eq!(
            origin("https://huggingface.co/x"),
            "https://huggingface.co:443"
        );
        assert_ne!(
            origin("http://127.0.0.1:80/x"),
            origin("http://127.0.0.1:81/")
        );
        assert!(is_loopback("http://127.0.0.1:5/"));
        assert!(!is_loopback("https://huggingface.co"));
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(9), Duration::from_millis(4000));
    }

    #[test]
    fn repo_listing() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let text = format!(r#"{{"sha":"{sha}","siblings":[{{"rfilename":"config.json"}}]}}"#);
        let info = parse_repo_info(&text).unwrap();
        assert_eq!(info.commit, sha);
        assert_eq!(info.files, vec!["config.json".to_string()]);
        assert!(parse_repo_info(r#"{"siblings":[]}"#).is_err());
    }
}
