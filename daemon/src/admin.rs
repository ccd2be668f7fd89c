//! The admin API on the `admin` Unix socket: status and reload for `vllamactl`. Every
//! connection's peer is identified by the kernel; each route needs a [`Role`].

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vllama_proto::{RELOAD_PATH, STATUS_PATH};

use crate::auth::{Peer, Role};
use crate::http::{self, Body};
use crate::state::Daemon;

/// Admin requests are small; anything larger is refused.
const MAX_ADMIN_BODY: u64 = 64 * 1024;

pub fn spawn(
    listener: UnixListener,
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
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    crate::server::accept_failed(&e).await;
                    continue;
                }
            };
            let peer = match Peer::of(&stream) {
                Ok(peer) => Arc::new(peer),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the admin peer's credentials; closing");
                    continue;
                }
            };
            let daemon = daemon.clone();
            let timeout = daemon.config().config.api.header_read_timeout.0;
            let service = hyper::service::service_fn(move |req| {
                let daemon = daemon.clone();
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(handle(req, &daemon, &peer).await) }
            });
            http::spawn_connection(&conns, shutdown.clone(), stream, timeout, service);
        }
        tracing::debug!("admin listener closed");
    });
}

async fn handle(req: Request<Incoming>, daemon: &Daemon, peer: &Peer) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let role = daemon.config().access.role(peer);
    let resp = route(req, daemon, peer, role).await;
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid,
        method = %method,
        path,
        status = resp.status().as_u16(),
        "admin request"
    );
    resp
}

/// The admin routes.
#[derive(Debug, Clone, Copy)]
enum Route {
    Status,
    Reload,
}

impl Route {
    fn needs(self) -> Role {
        match self {
            Route::Status => Role::Read,
            Route::Reload => Role::Admin,
        }
    }
}

async fn route(req: Request<Incoming>, daemon: &Daemon, peer: &Peer, role: Role) -> Response<Body> {
    let route = match (req.uri().path(), req.method()) {
        (STATUS_PATH, &Method::GET) => Route::Status,
        (RELOAD_PATH, &Method::POST) => Route::Reload,
        (STATUS_PATH | RELOAD_PATH, m) => {
            return http::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {m} not allowed"),
            )
        }
        (other, m) => {
            return http::error(StatusCode::NOT_FOUND, format!("no admin route {m} {other}"))
        }
    };
    if role < route.needs() {
        let access = &daemon.config().access;
        return http::error(StatusCode::FORBIDDEN, access.refusal(route.needs(), peer));
    }
    if let Err(e) = http::read_body(req, MAX_ADMIN_BODY).await {
        return http::error(StatusCode::BAD_REQUEST, e.to_string());
    }
    match route {
        Route::Status => http::json(StatusCode::OK, &daemon.status()),
        Route::Reload => {
            let outcome = crate::reload::reload(daemon).await;
            let status = if outcome.applied {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            http::json(status, &outcome)
        }
    }
}
