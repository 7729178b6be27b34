//! Turns what the hub answered into one-line messages that tell the user what to do, with
//! `huggingface_hub`'s reading of the `X-Error-Code` header.

use crate::Error;

/// A failed exchange with the hub, before context is added.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No answer: DNS, refused connection, timeout, connection dropped.
    Network(String),
    /// An HTTP error status, with the hub's `X-Error-Code` / `X-Error-Message` if sent.
    Status {
        code: u16,
        error_code: Option<String>,
        message: Option<String>,
    },
    /// An answer that breaks the protocol (missing header, bad JSON, wrong range).
    Protocol(String),
}

impl Failure {
    /// Worth retrying: the connection failed, or the server is overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Network(_) => true,
            Failure::Status { code, .. } => *code == 429 || *code >= 500,
            Failure::Protocol(_) => false,
        }
    }
}

/// What was being asked for, to name it in messages.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub endpoint: &'a str,
    pub repo: &'a str,
    /// A model or a dataset repository (URLs, cache folder and wording differ).
    pub kind: super::RepoKind,
    pub revision: &'a str,
    pub has_token: bool,
    pub token_source: &'a str,
}

impl Ctx<'_> {
    /// The repo as it appears in URLs: `org/name`, or `datasets/org/name`.
    pub fn url_repo(&self) -> String {
        self.kind.url_repo(self.repo)
    }

    /// The user-facing error for `failure` while fetching `file` (None: the repo listing).
    pub fn error(&self, failure: Failure, file: Option<&str>) -> Error {
        let (repo, hub) = (self.repo, self.endpoint);
        let what = match file {
            Some(f) => format!("{f} from {repo}"),
            None => repo.to_string(),
        };
        let msg = match failure {
            Failure::Network(e) => format!(
                "network error while fetching {what} from {hub}: {e}; check the connection \
                 (or proxy), or set HF_HUB_OFFLINE=1 to use only {}s already in the cache",
                self.kind.noun()
            ),
            Failure::Protocol(e) => format!("unexpected answer from {hub} for {what}: {e}"),
            Failure::Status {
                code,
                error_code,
                message,
            } => self.status_message(code, error_code.as_deref(), message.as_deref(), &what, file),
        };
        Error::Hub(msg)
    }

    fn status_message(
        &self,
        code: u16,
        error_code: Option<&str>,
        message: Option<&str>,
        what: &str,
        file: Option<&str>,
    ) -> String {
        let (repo, rev, hub) = (self.repo, self.revision, self.endpoint);
        let login =
            "set HF_TOKEN to a token of an account that has access (or run `hf auth login`)";
        let token = if self.has_token {
            format!("the token from {} has no access", self.token_source)
        } else {
            "no token is set".to_string()
        };
        let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
        if error_code == Some("GatedRepo") {
            return format!(
                "{repo} is gated ({code}, {token}): accept its licence at {hub}/{repo} while \
                 logged in, then {login}"
            );
        }
        if error_code == Some("RevisionNotFound") {
            return format!(
                "revision '{rev}' not found in {repo}: give a branch, tag or commit hash that \
                 exists (--revision, default main)"
            );
        }
        if error_code == Some("EntryNotFound") {
            let name = file.unwrap_or("file");
            return format!("{name} not found in {repo} at revision '{rev}'");
        }
        if code == 401 && message == Some("Invalid credentials in Authorization header") {
            return format!(
                "the Hugging Face token from {} is invalid or expired (401): create a new one \
                 at https://huggingface.co/settings/tokens",
                self.token_source
            );
        }
        if error_code == Some("RepoNotFound") || code == 401 || (code == 404 && file.is_none()) {
            let hint = if self.has_token {
                "or the token has no access to it".to_string()
            } else {
                format!("or it is private or gated and no token is set: {login}")
            };
            return format!(
                "{} {repo}: no such folder, and repository {repo} not found on {hub} \
                 ({code}): check the name, {hint}",
                self.kind.flag()
            );
        }
        match code {
            403 => format!(
                "access to {what} denied (403{detail}; {token}): if the repo is gated, accept its \
                 licence at {hub}/{repo}, then {login}"
            ),
            404 => format!("{what} at revision '{rev}' not found on {hub} (404)"),
            429 => format!(
                "{hub} is rate-limiting downloads of {what} (429): wait and retry, or {login}"
            ),
            _ => format!("{hub} answered HTTP {code} for {what}{detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(has_token: bool) -> Ctx<'static> {
        Ctx {
            endpoint: "https://hub",
            repo: "org/m",
            kind: super::super::RepoKind::Model,
            revision: "v9",
            has_token,
            token_source: "HF_TOKEN",
        }
    }

    fn status(code: u16, error_code: &str) -> Failure {
        Failure::Status {
            code,
            error_code: (!error_code.is_empty()).then(|| error_code.to_string()),
            message: None,
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let m = ctx(false)
            .error(status(401, "GatedRepo"), Some("config.json"))
            .to_string();
        assert!(
            m.contains("accept its licence") && m.contains("HF_TOKEN"),
            "{m}"
        );
        let m = ctx(true)
            .error(status(403, ""), Some("config.json"))
            .to_string();
        assert!(m.contains("denied") && m.contains("has no access"), "{m}");
        let m = ctx(false)
            .error(status(401, "RepoNotFound"), None)
            .to_string();
        assert!(
            m.contains("repository org/m not found") && m.contains("HF_TOKEN"),
            "{m}"
        );
        let m = ctx(true)
            .error(status(404, "RevisionNotFound"), None)
            .to_string();
        assert!(m.contains("revision 'v9' not found in org/m"), "{m}");
        let m = ctx(false)
            .error(Failure::Network("refused".into()), None)
            .to_string();
        assert!(
            m.contains("network error") && m.contains("HF_HUB_OFFLINE=1"),
            "{m}"
        );
        let m = ctx(true)
            .error(status(404, "EntryNotFound"), Some("a.json"))
            .to_string();
        assert!(m.contains("a.json not found in org/m"), "{m}");
    }
}
