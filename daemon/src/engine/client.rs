//! HTTP to one engine, over its private Unix socket (or loopback TCP), or to a remote engine
//! over TCP with TLS: the request shaped for its endpoint (a remote's path prefix and token,
//! never the client's credentials) and sent on one of the engine's pooled connections
//! ([`super::pool`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode, Uri};

use super::pool::{EngineBody, Pool};

/// Where an engine listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
    /// An engine on another machine (`[models."name"] remote`).
    Remote(Arc<Target>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Remote(t) => f.write_str(&t.url),
        }
    }
}

/// A remote engine's address: `http(s)://host:port/prefix`, the token sent to it (never the
/// client's own), and the TLS configuration for `https`.
pub struct Target {
    /// As configured, for messages (no secret in it).
    pub url: String,
    pub authority: Authority,
    pub host: String,
    pub port: u16,
    /// The URL's path without its trailing `/` (`""` for none): put before each request's.
    pub prefix: String,
    pub token: Option<HeaderValue>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

/// Headers that carry the client's credentials to vllamad: never passed to a remote engine.
const CLIENT_CREDENTIALS: [&str; 2] = ["authorization", "x-api-key"];

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("engine request failed: {0}")]
    Request(String),
    #[error("engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("engine answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

/// A pooled HTTP/1.1 client for one engine.
#[derive(Clone, Debug)]
pub struct EngineClient {
    pool: Arc<Pool>,
    /// The `Host` header of its requests.
    host: HeaderValue,
}

impl EngineClient {
    pub fn new(endpoint: Endpoint) -> Self {
        let host = match &endpoint {
            Endpoint::Remote(target) => HeaderValue::from_str(target.authority.as_str()).ok(),
            Endpoint::Unix(_) | Endpoint::Tcp(_) => None,
        };
        EngineClient {
            host: host.unwrap_or(HeaderValue::from_static("engine")),
            pool: Arc::new(Pool::new(endpoint)),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.pool.endpoint()
    }

    /// Whether it reaches an engine on another machine.
    pub fn remote(&self) -> bool {
        matches!(self.endpoint(), Endpoint::Remote(_))
    }

    /// Sends a request whose URI is its path and query, like `/v1/chat/completions`.
    pub async fn send(&self, mut req: Request<Bytes>) -> Result<Response<EngineBody>, ClientError> {
        if let Endpoint::Remote(target) = self.endpoint() {
            if !target.prefix.is_empty() {
                let rest = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let joined = [target.prefix.as_str(), rest].concat();
                *req.uri_mut() =
                    Uri::try_from(joined).map_err(|e| ClientError::Request(e.to_string()))?;
            }
            let headers = req.headers_mut();
            for name in CLIENT_CREDENTIALS {
                headers.remove(name);
            }
            if let Some(token) = &target.token {
                headers.insert(AUTHORIZATION, token.clone());
            }
        }
        if req.uri().path_and_query().is_none() {
            *req.uri_mut() = Uri::from_static("/");
        }
        req.headers_mut().insert(HOST, self.host.clone());
        self.pool
            .send(req)
            .await
            .map_err(|e| match self.endpoint() {
                Endpoint::Remote(target) => {
                    ClientError::Request(format!("{}: {}", target.url, error_chain(&e)))
                }
                _ => ClientError::Request(error_chain(&e)),
            })
    }

    /// A small request whose whole answer is read, within `timeout`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = async {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Bytes::new())
                .map_err(|e| ClientError::Request(e.to_string()))?;
            let resp = self.send(req).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Request(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// `GET /health` is 200.
    pub async fn healthy(&self, timeout: Duration) -> bool {
        matches!(
            self.call(Method::GET, "/health", timeout).await,
            Ok((StatusCode::OK, _))
        )
    }

    /// A POST whose non-2xx answer is an error (`/sleep`, `/wake_up`).
    pub async fn post_ok(&self, path: &str, timeout: Duration) -> Result<(), ClientError> {
        let (status, body) = self.call(Method::POST, path, timeout).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
