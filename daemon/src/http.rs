//! HTTP plumbing shared by the public and the admin API: serving one connection with
//! graceful shutdown, reading a request body under a limit, JSON and error responses.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub use http::request::Parts;
/// The response body type of every route: whole bodies now, streams later.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a just-accepted connection is given, at shutdown, for its first request to
/// arrive.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// Serves HTTP/1.1 (keep-alive, pipelining) on one connection until the client leaves or
/// `shutdown` fires; then the request in flight finishes and the connection closes.
pub fn spawn_connection<I, S>(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    io: I,
    header_read_timeout: Duration,
    service: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    tracker.spawn(async move {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // No `pipeline_flush`: it holds hyper's own answers to broken requests (431 for too
        // many or too large headers, 400, 414) unflushed until the connection closes, so the
        // client got nothing at all.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let born = tokio::time::Instant::now();
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = shutdown.cancelled() => {
                // A connection accepted a moment ago has its first request on the way (a
                // client writes right after connecting): closed now, before hyper has read
                // it, that client would get an empty reply during a restart. It gets the
                // moment, and its request is served before the connection closes.
                let young = tokio::time::sleep_until(born + FIRST_REQUEST_GRACE);
                tokio::select! {
                    result = conn.as_mut() => result,
                    _ = young => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        };
        if let Err(e) = result {
            // Clients that vanish or send garbage are normal on a public port.
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Read(String),
}

/// Reads the whole request body, refusing more than `limit` bytes: a declared
/// `Content-Length` over the limit is refused before a byte of it is read.
pub async fn read_body(
    req: Request<Incoming>,
    limit: u64,
) -> Result<(http::request::Parts, Bytes), BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let (parts, body) = req.into_parts();
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// 200 with no body (Ollama's delete and copy).
pub fn empty_ok() -> Response<Body> {
    Response::new(empty())
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", full(body))
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, "application/json; charset=utf-8", full(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "serializing a response failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: response not serializable",
            )
        }
    }
}

/// `{"error": "..."}` — the Ollama API's error shape, also used by the admin API.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &vllama_proto::ErrorBody {
            error: message.into(),
        },
    )
}

/// A response body fed from a channel: each message is sent as it comes (NDJSON, SSE).
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A streamed response and the sender that feeds it.
pub fn channel(
    status: StatusCode,
    content_type: &'static str,
) -> (tokio::sync::mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    (tx, with_type(status, content_type, ChannelBody(rx).boxed()))
}

/// A refused request: status and message, rendered as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub StatusCode, pub String);

impl From<Reject> for Response<Body> {
    fn from(r: Reject) -> Self {
        error(r.0, r.1)
    }
}
