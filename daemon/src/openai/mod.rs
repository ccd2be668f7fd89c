//! The OpenAI-compatible API, passed through to the model's engine: the body's `model` is
//! rewritten to the engine's served name, the answer (streamed or not) is relayed as it
//! comes, and the model's lease is held until the last byte, so keep_alive starts when the
//! response ends. A client that goes away drops the engine request, which aborts it there.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

mod body;
mod usage;

use crate::engine::EngineError;
use crate::http::{self, Body};
use crate::models::{ModelError, ModelName};
use crate::scheduler::{Lease, SchedError};
use crate::state::Daemon;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
pub fn error(status: StatusCode, message: impl Into<String>, kind: &str) -> Response<Body> {
    http::json(
        status,
        &json!({"error": {"message": message.into(), "type": kind, "param": null, "code": status.as_u16()}}),
    )
}

/// HTTP status and OpenAI error type of a scheduling error.
pub fn classify(e: &SchedError) -> (StatusCode, &'static str) {
    match e {
        SchedError::Model(ModelError::InvalidName { .. }) => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        SchedError::Model(_) | SchedError::NotLoaded(_) => {
            (StatusCode::NOT_FOUND, "not_found_error")
        }
        SchedError::Busy { .. } | SchedError::ShuttingDown => {
            (StatusCode::SERVICE_UNAVAILABLE, "server_busy")
        }
        SchedError::NoGpuRoom { .. } | SchedError::TooManyLoaded { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "insufficient_resources")
        }
        SchedError::Engine(EngineError::Timeout { .. }) => {
            (StatusCode::GATEWAY_TIMEOUT, "engine_timeout")
        }
        SchedError::Engine(_) | SchedError::Internal(_) | SchedError::Profile(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "engine_error")
        }
    }
}

/// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
pub async fn forward(daemon: &Daemon, parts: http::Parts, body: Bytes) -> Response<Body> {
    let request = match body::RequestBody::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                "invalid_request_error",
            )
        }
    };
    let name = match ModelName::parse(request.model()) {
        Ok(n) => {
            crate::observe::requested(&n.to_string());
            n
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                "invalid_request_error",
            )
        }
    };
    let lease = match daemon.scheduler.acquire(&name, None).await {
        Ok(lease) => lease,
        Err(e) => {
            let (status, kind) = classify(&e);
            return error(status, e.to_string(), kind);
        }
    };
    let body = request.with_model(lease.served_name());
    let mut req = Request::new(http::full(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for name in ["accept", "x-request-id", "authorization"] {
        if let Some(v) = parts.headers.get(name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    let resp = match lease.engine().client().send(req).await {
        Ok(resp) => resp,
        Err(e) => {
            let msg = format!("the engine for {} failed: {e}", lease.model());
            tracing::error!(model = %lease.model(), error = %e, "engine request failed");
            return error(StatusCode::BAD_GATEWAY, msg, "engine_error");
        }
    };
    relay(resp, lease)
}

fn relay(resp: Response<Incoming>, lease: Lease) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut out = Response::new(
        LeasedBody {
            inner: body,
            lease: Some(lease),
            observed: crate::observe::current(),
            saw_first: false,
            sse,
            finished: false,
            saw_done: false,
            usage: usage::UsageScan::default(),
        }
        .boxed(),
    );
    *out.status_mut() = parts.status;
    for name in [CONTENT_TYPE, hyper::header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The engine's response body, holding the model's lease until it ends. If the engine dies
/// mid-stream (the body breaks, or an event stream ends without `data: [DONE]`), an SSE
/// client gets a last `data: {"error": …}` event instead of a cut stream.
struct LeasedBody {
    inner: Incoming,
    lease: Option<Lease>,
    /// The request, for its first token and its end (dropped with the body).
    observed: Option<std::sync::Arc<crate::observe::Request>>,
    /// The first data frame was seen (its time is the request's first token).
    saw_first: bool,
    sse: bool,
    finished: bool,
    saw_done: bool,
    /// Token counts, from the response's `usage` object.
    usage: usage::UsageScan,
}

impl LeasedBody {
    fn error_event(&mut self, why: &str) -> Frame<Bytes> {
        let model = self
            .lease
            .take()
            .map(|l| l.model().to_string())
            .unwrap_or_default();
        tracing::error!(model, why, "engine stream broke off");
        let event = json!({"error": {
            "message": format!("the engine for {model} stopped in the middle of the response: {why}"),
            "type": "engine_error", "param": null, "code": 502}});
        Frame::data(Bytes::from(format!("data: {event}\n\n")))
    }
}

impl hyper::body::Body for LeasedBody {
    type Data = Bytes;
    type Error = http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.usage.feed(data);
                    if self.sse {
                        if !self.saw_first {
                            self.saw_first = true;
                            if let Some(r) = &self.observed {
                                r.first_token();
                            }
                        }
                        if memchr::memmem::find(data, b"data: [DONE]").is_some() {
                            self.saw_done = true;
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                if self.sse && !self.saw_done {
                    let event = self.error_event("its stream ended without [DONE]");
                    return Poll::Ready(Some(Ok(event)));
                }
                if let (Some(r), Some(u)) = (&self.observed, self.usage.usage()) {
                    r.tokens(u.prompt_tokens, u.completion_tokens);
                }
                self.lease = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                if self.sse {
                    Poll::Ready(Some(Ok(self.error_event(&e.to_string()))))
                } else {
                    self.lease = None;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            }
        }
    }
}
