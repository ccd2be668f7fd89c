//! HTTP plumbing shared by the public and the admin API: serving one connection with
//! graceful shutdown, reading a request body under a limit, JSON and error responses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn_threads::ConnThreads;
use crate::connections::Registration;
use crate::h1::{self, RequestBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub use http::request::Parts;
/// The response body type of every route: whole bodies now, streams later.
pub type Body = BoxBody<Bytes, BoxError>;

/// Serves HTTP/1.1 (keep-alive, pipelining) on one connection ([`crate::h1`]) until the
/// client leaves or `shutdown` fires; then the request in flight finishes and the connection
/// closes. A registered connection also closes at once when the registry sheds it (it
/// serves no request then), and tells the registry when it is busy. `stream` is a
/// non-blocking std TCP or Unix stream; it is served on the next of `threads`, or on the
/// current runtime.
pub fn spawn_connection<S, H, F>(
    tracker: &TaskTracker,
    threads: Option<&ConnThreads>,
    shutdown: CancellationToken,
    stream: S,
    header_read_timeout: Duration,
    registration: Option<Registration>,
    handler: H,
) where
    S: std::os::fd::AsRawFd + Send + Sync + 'static,
    H: FnMut(Request<RequestBody>) -> F + Send + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let serve = async move {
        let options = h1::Options {
            header_read_timeout,
            shutdown,
            shed: registration.as_ref().map(Registration::shed),
            activity: registration
                .as_ref()
                .map(|r| r.conn().clone() as Arc<dyn h1::Activity>),
        };
        // The socket is closed when `serve` returns, before `registration` tells the
        // registry the descriptor is free.
        h1::serve(stream, options, handler).await;
        drop(registration);
    };
    match threads {
        Some(threads) => threads.spawn(tracker, serve),
        None => {
            tracker.spawn(serve);
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body stopped arriving: nothing for {0:?} (api.header_read_timeout)")]
    Stalled(Duration),
    #[error("reading the request body failed: {0}")]
    Read(String),
}

/// Reads the whole request body, refusing more than `limit` bytes (a declared
/// `Content-Length` over the limit is refused before a byte of it is read) and giving up when
/// nothing arrives for `idle`: a client that trickles its body, or stops sending it, does not
/// hold its connection forever. A slow link that keeps sending is not cut.
pub async fn read_body(
    req: Request<RequestBody>,
    limit: u64,
    idle: Duration,
) -> Result<(http::request::Parts, Bytes), BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let (parts, mut body) = req.into_parts();
    let mut first: Option<Bytes> = None;
    let mut more = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + more.len();
        if (so_far + data.len()) as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
        // Most bodies come in one frame: kept as it is, without a copy.
        match &first {
            None if more.is_empty() => first = Some(data),
            _ => {
                if let Some(head) = first.take() {
                    let expected = declared.unwrap_or(0).min(limit);
                    more.reserve(usize::try_from(expected).unwrap_or(0));
                    more.extend_from_slice(&head);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    let bytes = match first {
        Some(head) if more.is_empty() => head,
        _ => more.freeze(),
    };
    Ok((parts, bytes))
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

/// JSON already written.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    with_type(status, "application/json; charset=utf-8", full(bytes))
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
/// Accept errors (out of fds, a connection reset before accept) must not end the loop;
/// back off briefly so a full fd table does not spin the CPU.
pub async fn accept_failed(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
