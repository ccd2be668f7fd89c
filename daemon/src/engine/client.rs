//! HTTP to one engine, over its private Unix socket (or loopback TCP), or to a remote engine
//! over TCP with TLS, with pooled keep-alive connections. hyper-util's client does the
//! pooling; this module only adds a connector that reaches an [`Endpoint`] (hyperlocal would
//! cover Unix sockets only) and, for a remote, its address, path prefix and token.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::http::{self, Body};

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
    pub scheme: Scheme,
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
    client: Client<Connector, Body>,
    endpoint: Endpoint,
}

impl EngineClient {
    pub fn new(endpoint: Endpoint) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(Connector(endpoint.clone()));
        EngineClient { client, endpoint }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether it reaches an engine on another machine.
    pub fn remote(&self) -> bool {
        matches!(self.endpoint, Endpoint::Remote(_))
    }

    /// Sends a request; `path_and_query` like `/v1/chat/completions`.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        // The pool keys connections by scheme and authority: one fixed pair, the path kept
        // as it came (no formatting and parsing of a new URI per request).
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        match &self.endpoint {
            Endpoint::Remote(target) => {
                uri.scheme = Some(target.scheme.clone());
                uri.authority = Some(target.authority.clone());
                if !target.prefix.is_empty() {
                    let rest = uri.path_and_query.as_ref().map_or("/", |p| p.as_str());
                    let joined = format!("{}{rest}", target.prefix);
                    uri.path_and_query = Some(
                        PathAndQuery::try_from(joined)
                            .map_err(|e| ClientError::Request(e.to_string()))?,
                    );
                }
                let headers = req.headers_mut();
                for name in CLIENT_CREDENTIALS {
                    headers.remove(name);
                }
                if let Some(token) = &target.token {
                    headers.insert(AUTHORIZATION, token.clone());
                }
            }
            Endpoint::Unix(_) | Endpoint::Tcp(_) => {
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(Authority::from_static("engine"));
            }
        }
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(uri).map_err(|e| ClientError::Request(e.to_string()))?;
        self.client
            .request(req)
            .await
            .map_err(|e| match &self.endpoint {
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
                .body(http::empty())
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

/// Connects to an engine's endpoint, whatever the request's URI says.
#[derive(Clone, Debug)]
pub struct Connector(Endpoint);

impl tower_service::Service<Uri> for Connector {
    type Response = EngineIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<EngineIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let endpoint = self.0.clone();
        Box::pin(async move {
            let stream = match endpoint {
                Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
                Endpoint::Tcp(addr) => {
                    let s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                Endpoint::Remote(target) => {
                    let s = TcpStream::connect((target.host.as_str(), target.port)).await?;
                    s.set_nodelay(true)?;
                    match &target.tls {
                        None => Stream::Tcp(s),
                        Some(config) => {
                            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                            let tls = tokio_rustls::TlsConnector::from(config.clone())
                                .connect(name, s)
                                .await?;
                            Stream::Tls(Box::new(tls))
                        }
                    }
                }
            };
            Ok(EngineIo(TokioIo::new(stream)))
        })
    }
}

/// A connection to an engine.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection type hyper-util's pool holds.
#[derive(Debug)]
pub struct EngineIo(TokioIo<Stream>);

impl Connection for EngineIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for EngineIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for EngineIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
