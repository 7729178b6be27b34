//! A mock Hugging Face hub for the hub tests: the API listing, `/resolve/` with the headers the
//! real hub sends (ETag, X-Repo-Commit, X-Linked-Etag/X-Linked-Size and a 302 to a separate
//! "CDN" server for LFS files, X-Error-Code on errors) and Range requests, plus fault
//! injection (cut a download at a byte, corrupt a blob) and a request log.

#![allow(dead_code)]

pub mod fixtures;
pub mod server;

use server::{Request, Response, Server};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A token with access to everything.
pub const GRANTED_TOKEN: &str = "hf_granted";
/// A valid token without access to gated or private repos.
pub const OTHER_TOKEN: &str = "hf_other";

/// A file of a commit: path and contents.
pub type File = (String, Vec<u8>);
/// The files of a commit.
pub type Files = Vec<File>;

/// Who may read a repo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Access {
    Public,
    Gated,
    Private,
}

/// A repository: commits (hash → files) and refs (branch/tag → commit hash).
#[derive(Debug, Clone)]
pub struct MockRepo {
    pub id: String,
    pub access: Access,
    pub refs: Vec<(String, String)>,
    pub commits: Vec<(String, Files)>,
}

impl MockRepo {
    /// A public repo whose `main` is one commit with `files`; returns it and the commit hash.
    pub fn single(id: &str, files: Files) -> (MockRepo, String) {
        let commit = fake_commit(id);
        let repo = MockRepo {
            id: id.into(),
            access: Access::Public,
            refs: vec![("main".into(), commit.clone())],
            commits: vec![(commit.clone(), files)],
        };
        (repo, commit)
    }
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    /// "hub" or "cdn".
    pub server: &'static str,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
struct Faults {
    /// sha256 → (absolute file offset where the connection drops, how many more times).
    cut: HashMap<String, (usize, usize)>,
    corrupt: Vec<String>,
}

struct State {
    repos: Vec<MockRepo>,
    blobs: HashMap<String, Vec<u8>>,
    cdn_url: String,
    log: Mutex<Vec<Logged>>,
    faults: Mutex<Faults>,
}

/// The hub and its CDN, on two 127.0.0.1 ports (so the token must not follow the redirect).
pub struct MockHub {
    hub: Server,
    _cdn: Server,
    state: Arc<State>,
}

impl MockHub {
    pub fn start(repos: Vec<MockRepo>) -> MockHub {
        let blobs = repos
            .iter()
            .flat_map(|r| r.commits.iter().flat_map(|(_, files)| files))
            .map(|(_, bytes)| (sha256_hex(bytes), bytes.clone()))
            .collect();
        let slot: Arc<Mutex<Option<Arc<State>>>> = Arc::new(Mutex::new(None));
        let s = slot.clone();
        let cdn = Server::start(move |req| {
            let state = s.lock().unwrap().clone().expect("state set");
            state.cdn(req)
        });
        let state = Arc::new(State {
            repos,
            blobs,
            cdn_url: cdn.url(),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
        });
        *slot.lock().unwrap() = Some(state.clone());
        let st = state.clone();
        let hub = Server::start(move |req| st.hub(req));
        MockHub {
            hub,
            _cdn: cdn,
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        self.hub.url()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// The next `times` CDN downloads of blob `sha` stop (connection closed) at file byte `at`.
    pub fn cut(&self, sha: &str, at: usize, times: usize) {
        self.state
            .faults
            .lock()
            .unwrap()
            .cut
            .insert(sha.into(), (at, times));
    }

    /// Serves blob `sha` with a flipped byte.
    pub fn corrupt(&self, sha: &str) {
        self.state.faults.lock().unwrap().corrupt.push(sha.into());
    }

    pub fn heal(&self) {
        *self.state.faults.lock().unwrap() = Faults::default();
    }
}

impl State {
    fn record(&self, server: &'static str, req: &Request) {
        self.log.lock().unwrap().push(Logged {
            server,
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.header("range").map(str::to_string),
            auth: req.header("authorization").map(str::to_string),
        });
    }

    fn hub(&self, req: &Request) -> Response {
        self.record("hub", req);
        let path = req.path.split('?').next().unwrap_or("");
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let Some((repo, rev)) = rest.split_once("/revision/") else {
                return Response::new(404);
            };
            return self.api(req, repo, &decode(rev));
        }
        // Dataset repos are registered with ids `datasets/org/name`, which is also how their
        // resolve URLs name them.
        if let Some(rest) = path.strip_prefix("/api/datasets/") {
            let Some((repo, rev)) = rest.split_once("/revision/") else {
                return Response::new(404);
            };
            return self.api(req, &format!("datasets/{repo}"), &decode(rev));
        }
        let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
            return Response::new(404);
        };
        let Some((rev, file)) = rest.split_once('/') else {
            return Response::new(404);
        };
        self.resolve(req, repo, &decode(rev), &decode(file))
    }

    /// `/api/models/{repo}/revision/{rev}`: the listing (readable for gated repos too).
    fn api(&self, req: &Request, repo_id: &str, rev: &str) -> Response {
        let repo = match self.authorize(req, repo_id, false) {
            Ok(repo) => repo,
            Err(resp) => return resp,
        };
        let Some((commit, files)) = find_commit(repo, rev) else {
            return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let siblings: Vec<_> = files
            .iter()
            .map(|(name, _)| serde_json::json!({ "rfilename": name }))
            .collect();
        let body = serde_json::json!({
            "id": repo.id, "sha": commit, "private": repo.access == Access::Private,
            "gated": if repo.access == Access::Gated { "manual" } else { "false" },
            "siblings": siblings,
        });
        Response::new(200)
            .header("Content-Type", "application/json")
            .body(body.to_string().into_bytes())
    }

    /// `/{repo}/resolve/{rev}/{file}`: small files inline, LFS files by redirect to the CDN.
    fn resolve(&self, req: &Request, repo_id: &str, rev: &str, file: &str) -> Response {
        let repo = match self.authorize(req, repo_id, true) {
            Ok(repo) => repo,
            Err(resp) => return resp,
        };
        let Some((commit, files)) = find_commit(repo, rev) else {
            return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        };
        let Some((_, bytes)) = files.iter().find(|(name, _)| name == file) else {
            return error(404, "EntryNotFound", "Entry not found");
        };
        let sha = sha256_hex(bytes);
        if is_lfs(file) {
            let location = format!("{}/blobs/{sha}?X-Amz-Signature=mock", self.cdn_url);
            return Response::new(302)
                .header("Location", &location)
                .header("ETag", format!("\"{}\"", git_oid(sha.as_bytes())))
                .header("X-Linked-Etag", format!("\"{sha}\""))
                .header("X-Linked-Size", bytes.len())
                .header("X-Repo-Commit", commit)
                .body(format!("Found. Redirecting to {location}").into_bytes());
        }
        ranged(req, bytes)
            .header("ETag", format!("\"{}\"", git_oid(bytes)))
            .header("X-Repo-Commit", commit)
    }

    /// The CDN: blobs by sha256, Range support, presigned (so it rejects Authorization).
    fn cdn(&self, req: &Request) -> Response {
        self.record("cdn", req);
        if req.header("authorization").is_some() {
            return Response::new(400).body(b"Only one auth mechanism allowed".to_vec());
        }
        let path = req.path.split('?').next().unwrap_or("");
        let sha = path.trim_start_matches("/blobs/");
        let Some(bytes) = self.blobs.get(sha) else {
            return Response::new(404);
        };
        let mut faults = self.faults.lock().unwrap();
        let mut data = bytes.clone();
        if faults.corrupt.iter().any(|s| s == sha) {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        let mut resp = ranged(req, &data).header("ETag", format!("\"{sha}\""));
        if let Some((at, times)) = faults.cut.get_mut(sha) {
            let start = range_start(req).unwrap_or(0);
            if *times > 0 && req.method == "GET" && start < *at {
                *times -= 1;
                resp.cut_after = Some(*at - start);
            }
        }
        resp
    }

    /// The repo if the request may read it, else the hub's error answer.
    fn authorize(
        &self,
        req: &Request,
        repo_id: &str,
        download: bool,
    ) -> Result<&MockRepo, Response> {
        let token = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "));
        if token.is_some_and(|t| t != GRANTED_TOKEN && t != OTHER_TOKEN) {
            return Err(Response::new(401).header(
                "X-Error-Message",
                "Invalid credentials in Authorization header",
            ));
        }
        let repo = self.repos.iter().find(|r| r.id == repo_id);
        let granted = token == Some(GRANTED_TOKEN);
        let visible = repo.filter(|r| r.access != Access::Private || granted);
        let Some(repo) = visible else {
            let status = if token.is_some() { 404 } else { 401 };
            return Err(error(status, "RepoNotFound", "Repository not found"));
        };
        if download && repo.access == Access::Gated && !granted {
            let status = if token.is_some() { 403 } else { 401 };
            let msg = format!("Access to model {repo_id} is restricted.");
            return Err(error(status, "GatedRepo", &msg));
        }
        Ok(repo)
    }
}

fn find_commit<'a>(repo: &'a MockRepo, rev: &str) -> Option<(&'a str, &'a [File])> {
    let commit = repo
        .refs
        .iter()
        .find(|(name, _)| name == rev)
        .map(|(_, c)| c.as_str())
        .unwrap_or(rev);
    repo.commits
        .iter()
        .find(|(c, _)| c == commit)
        .map(|(c, files)| (c.as_str(), files.as_slice()))
}

/// 200 with the whole body, or 206/416 for a `Range: bytes=S-` request.
fn ranged(req: &Request, bytes: &[u8]) -> Response {
    let len = bytes.len();
    let resp = match range_start(req) {
        None => Response::new(200).body(bytes.to_vec()),
        Some(s) if s >= len => {
            return Response::new(416).header("Content-Range", format!("bytes */{len}"))
        }
        Some(s) => Response::new(206)
            .header("Content-Range", format!("bytes {s}-{}/{len}", len - 1))
            .body(bytes[s..].to_vec()),
    };
    resp.header("Accept-Ranges", "bytes")
}

fn range_start(req: &Request) -> Option<usize> {
    let spec = req.header("range")?.strip_prefix("bytes=")?;
    spec.split('-').next()?.parse().ok()
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::new(status)
        .header("X-Error-Code", code)
        .header("X-Error-Message", message)
        .body(
            serde_json::json!({ "error": message })
                .to_string()
                .into_bytes(),
        )
}

/// LFS-tracked names, as a typical `.gitattributes` has them.
fn is_lfs(name: &str) -> bool {
    [".safetensors", ".bin", ".pth", ".gguf"]
        .iter()
        .any(|ext| name.ends_with(ext))
        || name == "tokenizer.json"
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stand-in for the git blob id (40 hex), stable per content.
pub fn git_oid(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format!("blob {}\0", bytes.len()));
    h.update(bytes);
    h.finalize()
        .iter()
        .take(20)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 40-hex commit hash derived from `seed`.
pub fn fake_commit(seed: &str) -> String {
    sha256_hex(seed.as_bytes())[..40].to_string()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
