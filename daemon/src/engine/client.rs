//! HTTP to one engine, over its private Unix socket (or loopback TCP), with pooled
//! keep-alive connections. hyper-util's client does the pooling; this module only adds a
//! connector that reaches an [`Endpoint`] (hyperlocal would cover Unix sockets only).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::http::{self, Body};

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

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

    /// Sends a request; `path_and_query` like `/v1/chat/completions`.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ClientError> {
        // The pool keys connections by scheme and authority: one fixed pair, the path kept
        // as it came (no formatting and parsing of a new URI per request).
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
        uri.authority = Some(hyper::http::uri::Authority::from_static("engine"));
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(uri).map_err(|e| ClientError::Request(e.to_string()))?;
        self.client
            .request(req)
            .await
            .map_err(|e| ClientError::Request(error_chain(&e)))
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
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
