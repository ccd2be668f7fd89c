//! The Hugging Face Hub's HTTP API, as much of it as a pull needs: a revision's commit, the
//! file tree (paginated), and file downloads (ranges, redirects). hyper with rustls; the
//! endpoint is configurable (`store.endpoint`, the `HF_ENDPOINT` convention), which is also how
//! tests point it at a fake hub on loopback. The token goes to the endpoint's host only, never
//! to the hosts it redirects to (CDNs).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, LINK, LOCATION, RANGE, USER_AGENT};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Time allowed for a response's head; bodies have their own idle timeout.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error(
        "{repo} was not found on {endpoint} (check the name; a private repository needs a token)"
    )]
    RepoNotFound { repo: String, endpoint: String },
    #[error("{repo} has no revision `{revision}`")]
    RevisionNotFound { repo: String, revision: String },
    #[error("{repo}: {path} was not found at {commit}")]
    FileNotFound {
        repo: String,
        path: String,
        commit: String,
    },
    #[error("{repo} is gated or private: accept its license on the hub and configure a token (store.token_file or the hf-token credential; see docs/OPERATIONS.md)")]
    Gated { repo: String },
    #[error("{url}: the hub answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: more than {MAX_REDIRECTS} redirects")]
    Redirects { url: String },
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
}

impl HubError {
    /// Worth another try: connection trouble, timeouts, 5xx, 429.
    pub fn transient(&self) -> bool {
        match self {
            HubError::Transport { .. } => true,
            HubError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// `GET /api/models/{repo}/revision/{rev}`.
#[derive(Debug, Deserialize)]
pub struct RevisionInfo {
    pub sha: String,
}

/// One entry of `GET /api/models/{repo}/tree/{rev}?recursive=true`.
#[derive(Debug, Clone, Deserialize)]
pub struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    /// The git blob sha1.
    pub oid: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Lfs {
    /// sha256 of the content.
    pub oid: String,
    pub size: u64,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of one hub endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    client: Client<Connector, Empty<Bytes>>,
    endpoint: String,
    host: Option<String>,
    token: Option<String>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Hub {
    /// A client of `endpoint` (`https://…` or `http://…`, no trailing slash needed).
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Hub, String> {
        let tls = tls_config()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(15)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let host = endpoint
            .parse::<Uri>()
            .map_err(|e| format!("store.endpoint {endpoint:?}: {e}"))?
            .authority()
            .map(|a| a.to_string());
        Ok(Hub {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            endpoint,
            host,
            token,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The commit a revision (branch, tag or commit) points to.
    pub async fn revision(&self, repo: &str, revision: &str) -> Result<String, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.endpoint,
            encode(revision)
        );
        let resp = self.get(&url, None).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(HubError::Gated { repo: repo.into() })
            }
            StatusCode::NOT_FOUND => {
                // The hub says which: a missing repository, or a missing revision.
                let body = read_small(resp, &url).await.unwrap_or_default();
                return Err(
                    if String::from_utf8_lossy(&body).contains("RevisionNotFound") {
                        HubError::RevisionNotFound {
                            repo: repo.into(),
                            revision: revision.into(),
                        }
                    } else {
                        HubError::RepoNotFound {
                            repo: repo.into(),
                            endpoint: self.endpoint.clone(),
                        }
                    },
                );
            }
            status => return Err(HubError::Status { url, status }),
        }
        let body = read_small(resp, &url).await?;
        let info: RevisionInfo = serde_json::from_slice(&body).map_err(|e| HubError::Protocol {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if info.sha.len() != 40 || !info.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HubError::Protocol {
                url,
                message: format!("`{}` is not a commit hash", info.sha),
            });
        }
        Ok(info.sha)
    }

    /// Every file of the repository at `commit`, following the pagination's `Link` headers.
    pub async fn tree(&self, repo: &str, commit: &str) -> Result<Vec<TreeEntry>, HubError> {
        let mut url = format!(
            "{}/api/models/{repo}/tree/{commit}?recursive=true&expand=false",
            self.endpoint
        );
        let mut entries = Vec::new();
        for _page in 0..10_000 {
            let resp = self.get(&url, None).await?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(HubError::Gated { repo: repo.into() })
                }
                status => return Err(HubError::Status { url, status }),
            }
            let next = resp
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|n| resolve(&url, &n));
            let body = read_small(resp, &url).await?;
            let page: Vec<TreeEntry> =
                serde_json::from_slice(&body).map_err(|e| HubError::Protocol {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            entries.extend(page.into_iter().filter(|e| e.kind == "file"));
            match next {
                Some(n) => url = n,
                None => return Ok(entries),
            }
        }
        Err(HubError::Protocol {
            url,
            message: "the tree listing does not end".into(),
        })
    }

    /// A file's content from byte `from` on (a `Range` request when `from > 0`: the answer is
    /// 206 when the server honours it, 200 with the whole file when not).
    pub async fn download(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        from: u64,
    ) -> Result<Response<Incoming>, HubError> {
        let url = format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, encode(path));
        let range = (from > 0).then(|| format!("bytes={from}-"));
        let resp = self.get(&url, range.as_deref()).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                Ok(resp)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(HubError::Gated { repo: repo.into() })
            }
            StatusCode::NOT_FOUND => Err(HubError::FileNotFound {
                repo: repo.into(),
                path: path.into(),
                commit: commit.into(),
            }),
            status => Err(HubError::Status { url, status }),
        }
    }

    /// GET, following redirects (relative and absolute); the token only for the endpoint.
    async fn get(&self, url: &str, range: Option<&str>) -> Result<Response<Incoming>, HubError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = url.parse().map_err(|e| HubError::Protocol {
                url: url.clone(),
                message: format!("bad URL: {e}"),
            })?;
            let same_host = uri.authority().map(|a| a.to_string()) == self.host;
            let mut req = Request::get(uri)
                .header(USER_AGENT, concat!("vllama/", env!("CARGO_PKG_VERSION")))
                .body(Empty::new())
                .map_err(|e| HubError::Protocol {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            if let Some(r) = range {
                if let Ok(v) = HeaderValue::from_str(r) {
                    req.headers_mut().insert(RANGE, v);
                }
            }
            if let (true, Some(token)) = (same_host, &self.token) {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    req.headers_mut().insert(AUTHORIZATION, v);
                }
            }
            let resp = tokio::time::timeout(HEAD_TIMEOUT, self.client.request(req))
                .await
                .map_err(|_| HubError::Transport {
                    url: url.clone(),
                    message: format!("no answer within {HEAD_TIMEOUT:?}"),
                })?
                .map_err(|e| HubError::Transport {
                    url: url.clone(),
                    message: error_chain(&e),
                })?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                return Err(HubError::Protocol {
                    url,
                    message: format!("{} without Location", resp.status()),
                });
            };
            url = resolve(&url, location);
        }
        Err(HubError::Redirects { url })
    }
}

/// The TLS configuration, built once per process: reading the system's CA store is a few
/// hundred files, which every pull would otherwise read again. (New CA certificates take
/// effect at the next start.)
fn tls_config() -> Result<rustls::ClientConfig, String> {
    static TLS: std::sync::OnceLock<Result<rustls::ClientConfig, String>> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(rustls_native_roots())
            .with_no_client_auth())
    })
    .clone()
}

fn rustls_native_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "reading the system's CA certificates");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no CA certificates found (install ca-certificates): HTTPS pulls will fail");
    }
    roots
}

/// The whole (small, JSON) body.
async fn read_small(resp: Response<Incoming>, url: &str) -> Result<Bytes, HubError> {
    let body = tokio::time::timeout(HEAD_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| HubError::Transport {
            url: url.into(),
            message: "the answer stalled".into(),
        })?
        .map_err(|e| HubError::Transport {
            url: url.into(),
            message: e.to_string(),
        })?;
    Ok(body.to_bytes())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// `location` relative to `base` (RFC 3986's common cases: absolute, `//host`, `/path`,
/// `path`).
pub fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(net) = location.strip_prefix("//") {
        return format!("{scheme}://{net}");
    }
    let (authority, after) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let origin = format!("{scheme}://{authority}");
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = after.split(['?', '#']).next().unwrap_or("");
    // The base's folder (the location replaces its last segment).
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    format!("{origin}{dir}/{location}")
}

/// Percent-encodes a repository path for a URL, keeping `/`.
pub fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_like_a_browser() {
        let base = "https://hub.example/org/m/resolve/abc/dir/model.safetensors?x=1";
        assert_eq!(
            resolve(base, "https://cdn.example/x"),
            "https://cdn.example/x"
        );
        assert_eq!(resolve(base, "//cdn.example/y"), "https://cdn.example/y");
        assert_eq!(resolve(base, "/api/z"), "https://hub.example/api/z");
        assert_eq!(
            resolve(base, "other.bin"),
            "https://hub.example/org/m/resolve/abc/dir/other.bin"
        );
        assert_eq!(resolve("http://h:1", "a"), "http://h:1/a");
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link("<https://h/api/models/a/b/tree/main?cursor=xyz>; rel=\"next\"").as_deref(),
            Some("https://h/api/models/a/b/tree/main?cursor=xyz")
        );
        assert_eq!(next_link("<https://h/p>; rel=\"prev\""), None);
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(encode("1_Pooling/config.json"), "1_Pooling/config.json");
        assert_eq!(encode("a b#c"), "a%20b%23c");
    }

    #[test]
    fn transient_errors() {
        let s = |status| HubError::Status {
            url: "u".into(),
            status,
        };
        assert!(s(StatusCode::BAD_GATEWAY).transient());
        assert!(s(StatusCode::TOO_MANY_REQUESTS).transient());
        assert!(!s(StatusCode::BAD_REQUEST).transient());
        assert!(!HubError::Gated { repo: "r".into() }.transient());
    }
}
