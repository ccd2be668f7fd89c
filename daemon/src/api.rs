//! The public HTTP API on the `api` listener. For now the routes every Ollama client probes:
//! `GET|HEAD /` and `GET /api/version`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Body, BodyError};
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

async fn handle(req: Request<Incoming>, daemon: &Daemon) -> Response<Body> {
    let limit = daemon.config().config.api.max_request_body.0;
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
        _ => http::error(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        ),
    }
}
