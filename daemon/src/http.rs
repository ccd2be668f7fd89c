//! HTTP plumbing shared by the public and the admin API: serving one connection with
//! graceful shutdown, reading a request body under a limit, JSON and error responses.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connections::{Conn, Registration};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub use http::request::Parts;
/// The response body type of every route: whole bodies now, streams later.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long a just-accepted connection is given, at shutdown, for its first request to
/// arrive.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// Serves HTTP/1.1 (keep-alive, pipelining) on one connection until the client leaves or
/// `shutdown` fires; then the request in flight finishes and the connection closes. A
/// registered connection also closes at once when the registry sheds it (it serves no
/// request then).
pub fn spawn_connection<I, S>(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    io: I,
    header_read_timeout: Duration,
    registration: Option<Registration>,
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
        let shed = registration.as_ref().map(Registration::shed);
        let shed = async {
            match shed {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        // In a block of its own: the socket is closed when `conn` is dropped at its end,
        // before `registration` tells the registry the descriptor is free.
        let result = {
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shed => Ok(()),
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
            }
        };
        if let Err(e) = result {
            // Clients that vanish or send garbage are normal on a public port.
            tracing::debug!(error = %e, "connection ended with an error");
        }
        drop(registration);
    });
}

/// A response body that marks its connection idle again once it is sent (or dropped).
pub struct Tracked {
    body: Body,
    conn: Arc<Conn>,
}

impl Tracked {
    pub fn wrap(resp: Response<Body>, conn: Arc<Conn>) -> Response<Body> {
        resp.map(|body| Tracked { body, conn }.boxed())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.conn.end();
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
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
    req: Request<Incoming>,
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
