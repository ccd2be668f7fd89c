//! The routes passed through to the model's engine — OpenAI's chat, completions,
//! embeddings, Responses and tokenize, and Anthropic's Messages: the body's `model` is
//! rewritten to the engine's served name, the answer (streamed or not) is relayed as it
//! comes ([`relay`]), and the model's lease is held until the last byte, so keep_alive starts
//! when the response ends. A client that goes away drops the engine request, which aborts
//! it there. Errors are answered in the route's [`Dialect`].

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

pub(crate) mod body;
pub mod dialect;
pub(crate) mod relay;
pub mod responses;
pub(crate) mod usage;

pub use dialect::Dialect;

use crate::http::{self, Body};
use crate::models::ModelName;
use crate::scheduler::Lease;
use crate::state::Daemon;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
pub fn error(status: StatusCode, message: impl Into<String>, kind: &str) -> Response<Body> {
    Dialect::OpenAi.error(status, message, kind)
}

/// `POST` to a model's route: OpenAI's chat, completions, embeddings, Responses and
/// tokenize routes, and Anthropic's Messages (`dialect` says whose errors to answer with).
pub async fn forward(
    daemon: &Daemon,
    parts: http::Parts,
    body: Bytes,
    dialect: Dialect,
) -> Response<Body> {
    let request = match body::RequestBody::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            return dialect.error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                "invalid_request_error",
            )
        }
    };
    let name = match ModelName::parse(request.model()) {
        Ok(n) => {
            crate::observe::requested(&n);
            n
        }
        Err(e) => {
            return dialect.error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                "invalid_request_error",
            )
        }
    };
    let lease = match daemon.scheduler.acquire(&name, None).await {
        Ok(lease) => lease,
        Err(e) => {
            let (status, kind) = e.status();
            return dialect.error(status, e.to_string(), kind);
        }
    };
    let body = Bytes::from(request.with_model(lease.served_name()));
    let config = daemon.config();
    let ids = (parts.uri.path() == "/v1/responses" && config.config.engine.responses_store)
        .then(|| daemon.responses.clone());
    let stall = crate::stall::Stall::new(
        config.config.engine.stall_timeout.0,
        lease.engine().clone(),
        daemon.tasks.clone(),
    );
    send_watched(lease, parts, body, dialect, (ids, Some(stall))).await
}

/// Sends a request to the lease's engine as it came (method, path, query) and relays the
/// answer.
pub(crate) async fn send(
    lease: Lease,
    parts: http::Parts,
    body: Bytes,
    dialect: Dialect,
) -> Response<Body> {
    send_watched(lease, parts, body, dialect, (None, None)).await
}

/// Headers passed on to the engine: what the client accepts, the request id, and what
/// Anthropic clients send (vLLM reads `anthropic-beta` for some features).
/// Names, not strings: a `&str` name is parsed and checked on every lookup and insert.
const PASSED_HEADERS: [HeaderName; 6] = [
    hyper::header::ACCEPT,
    crate::request_id::HEADER,
    hyper::header::AUTHORIZATION,
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("x-api-key"),
];

/// Error bodies read whole to reshape them; longer ones are cut.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

async fn send_watched(
    lease: Lease,
    parts: http::Parts,
    body: Bytes,
    dialect: Dialect,
    (ids, stall): (
        Option<std::sync::Arc<responses::ResponseIds>>,
        Option<crate::stall::Stall>,
    ),
) -> Response<Body> {
    let ends = dialect::stream_end(parts.uri.path());
    let has_body = !body.is_empty();
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    if has_body {
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    // One pass over the client's few headers: cheaper than a hashed lookup for each name.
    for (name, value) in &parts.headers {
        if PASSED_HEADERS.contains(name) {
            req.headers_mut().append(name.clone(), value.clone());
        }
    }
    let resp = match lease.engine().client().send(req).await {
        Ok(resp) => resp,
        Err(e) => {
            let msg = format!("the engine for {} failed: {e}", lease.model());
            tracing::error!(model = %lease.model(), error = %e, "engine request failed");
            return dialect.error(lease.engine().lost(&e), msg, "engine_error");
        }
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let bytes = match http_body_util::Limited::new(resp.into_body(), ERROR_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        return dialect.engine_error(status, &bytes);
    }
    relay::relay(
        resp,
        lease,
        relay::Watch {
            dialect,
            ends,
            ids,
            stall,
        },
    )
}
