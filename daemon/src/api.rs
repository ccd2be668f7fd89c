//! The public HTTP API on the `api` listener. For now the routes every Ollama client probes:
//! `GET|HEAD /` and `GET /api/version`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, HOST,
    ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tracing::Instrument;

use crate::cors;
use crate::http::{self, Body, BodyError};
use crate::request_id;
use crate::state::Daemon;

/// Accepts connections until `shutdown`, then drops the listener (new connections are
/// refused, or queued by systemd's socket for the next start).
pub fn spawn(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    crate::server::accept_failed(&e).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tracing::trace!(%peer, "api connection");
            let daemon = daemon.clone();
            let timeout = daemon.config().config.api.header_read_timeout.0;
            let service = hyper::service::service_fn(move |req| {
                let daemon = daemon.clone();
                async move { Ok::<_, Infallible>(handle(req, &daemon).await) }
            });
            http::spawn_connection(&conns, shutdown.clone(), stream, timeout, service);
        }
        tracing::debug!("api listener closed");
    });
}

#[derive(Serialize)]
struct Version {
    version: &'static str,
}

async fn handle(mut req: Request<Incoming>, daemon: &Daemon) -> Response<Body> {
    let started = std::time::Instant::now();
    let id = request_id::of(req.headers());
    req.headers_mut()
        .insert(request_id::HEADER, request_id::value(&id));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        model = tracing::field::Empty,
    );
    let access = daemon.config().config.log.access;
    let mut resp = guarded(req, daemon).instrument(span.clone()).await;
    resp.headers_mut()
        .insert(request_id::HEADER, request_id::value(&id));
    if access {
        let _in = span.enter();
        tracing::info!(
            target: "vllamad::access",
            status = resp.status().as_u16(),
            head_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
    resp
}

/// Host and Origin checks (CORS), then the route.
async fn guarded(req: Request<Incoming>, daemon: &Daemon) -> Response<Body> {
    let config = daemon.config();
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if daemon.api_on_loopback
        && !cors::host_allowed(req.headers().get(HOST).and_then(|v| v.to_str().ok()))
    {
        return http::error(
            StatusCode::FORBIDDEN,
            "host not allowed: this server answers its own machine's names only",
        );
    }
    if let Some(o) = &origin {
        if !cors::origin_allowed(o, &config.config.api.origins) {
            return http::error(
                StatusCode::FORBIDDEN,
                format!(
                    "origin {o} is not allowed; add it to api.origins in /etc/vllama/vllama.toml"
                ),
            );
        }
        if req.method() == Method::OPTIONS {
            return preflight(o, &req);
        }
    }
    let mut resp = route(req, daemon, config.config.api.max_request_body.0).await;
    if let Some(o) = origin {
        if let Ok(v) = HeaderValue::from_str(&o) {
            resp.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
            resp.headers_mut()
                .insert(VARY, HeaderValue::from_static("Origin"));
        }
    }
    resp
}

fn preflight(origin: &str, req: &Request<Incoming>) -> Response<Body> {
    let mut resp = Response::new(http::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
    );
    let asked = req
        .headers()
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(
                "Authorization, Content-Type, User-Agent, Accept, X-Requested-With",
            )
        });
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    h.insert(VARY, HeaderValue::from_static("Origin"));
    resp
}

async fn route(req: Request<Incoming>, daemon: &Daemon, limit: u64) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (parts, body) = match http::read_body(req, limit).await {
        Ok(read) => read,
        Err(BodyError::TooLarge { limit }) => {
            let mut resp = http::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than {} (api.max_request_body)",
                    crate::units::ByteSize(limit)
                ),
            );
            // The rest of the body is not read: this connection cannot carry another request.
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Err(e @ BodyError::Read(_)) => return http::error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match (path.as_str(), &method) {
        ("/", &Method::GET | &Method::HEAD) => http::text(StatusCode::OK, "Ollama is running"),
        ("/api/version", &Method::GET | &Method::HEAD) => http::json(
            StatusCode::OK,
            &Version {
                version: crate::VERSION,
            },
        ),
        ("/v1/chat/completions" | "/v1/completions" | "/v1/embeddings", &Method::POST) => {
            crate::openai::forward(daemon, parts, body).await
        }
        ("/" | "/api/version", _) => http::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}"),
        ),
        _ => match crate::ollama::route(daemon, &parts, body).await {
            Some(resp) => resp,
            None => http::error(
                StatusCode::NOT_FOUND,
                format!("no route for {method} {path}"),
            ),
        },
    }
}
