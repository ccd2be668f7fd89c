//! The public HTTP API on the `api` listener: request ids, the Host and Origin guards, and
//! the routes (`/`, `/api/version`, `/metrics`, the OpenAI pass-through; the Ollama routes in
//! [`crate::ollama`]). Also the optional `/metrics`-only listener.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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

use crate::conn_threads::ConnThreads;
use crate::cors;
use crate::h1::RequestBody;
use crate::http::{self, Body, BodyError};
use crate::observe;
use crate::request_id;
use crate::state::Daemon;

/// Accepts connections until `shutdown`, then drops the listener (new connections are
/// refused, or queued by systemd's socket for the next start). Each connection is served on
/// the next of `threads`.
pub fn spawn(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    tracker: &TaskTracker,
    threads: Arc<ConnThreads>,
    shutdown: CancellationToken,
) {
    serve(
        listener,
        daemon,
        tracker,
        Some(threads),
        shutdown,
        "api",
        |req, daemon, peer| async move { handle(req, &daemon, peer).await },
    );
}

/// `/metrics` alone, on its own listener (`metrics.listen`).
pub fn spawn_metrics(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    serve(
        listener,
        daemon,
        tracker,
        None,
        shutdown,
        "metrics",
        |req, daemon, _peer| async move {
            match (req.uri().path(), req.method()) {
                ("/metrics", &Method::GET) => crate::scrape::respond(&daemon).await,
                _ => http::error(
                    StatusCode::NOT_FOUND,
                    "this listener serves GET /metrics only",
                ),
            }
        },
    );
}

fn serve<H, F>(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    tracker: &TaskTracker,
    threads: Option<Arc<ConnThreads>>,
    shutdown: CancellationToken,
    name: &'static str,
    handler: H,
) where
    H: Fn(Request<RequestBody>, Arc<Daemon>, std::net::SocketAddr) -> F
        + Clone
        + Send
        + Sync
        + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let conns = tracker.clone();
    tracker.spawn(async move {
        let registry = daemon.connections.clone();
        let mut shed_log = crate::connections::LogEvery::new(Duration::from_secs(10));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) if crate::connections::out_of_fds(&e) => {
                    make_room(&listener, &registry, &mut shed_log).await;
                    continue;
                }
                Err(e) => {
                    crate::http::accept_failed(&e).await;
                    continue;
                }
            };
            let config = daemon.config();
            let limit = config.config.api.max_headerless_per_client;
            let (registration, shed) = registry.admit(peer.ip(), limit);
            if shed && shed_log.due() {
                tracing::warn!(%peer, limit, "closing the oldest connections of a client that holds more than its share open without sending a request (api.max_headerless_per_client)");
            }
            let _ = stream.set_nodelay(true);
            tracing::trace!(%peer, listener = name, "connection");
            let timeout = config.config.api.header_read_timeout.0;
            let daemon = daemon.clone();
            let handler = handler.clone();
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot take over a connection");
                    continue;
                }
            };
            http::spawn_connection(
                &conns,
                threads.as_deref(),
                shutdown.clone(),
                stream,
                timeout,
                Some(registration),
                move |req| handler(req, daemon.clone(), peer),
            );
        }
        tracing::debug!(listener = name, "listener closed");
    });
}

/// `accept` failed for want of descriptors: close the oldest connection that serves no
/// request and let the next `accept` take the new client; if every connection is busy, tell
/// the next client 503 at once rather than leave it waiting in the backlog.
async fn make_room(
    listener: &TcpListener,
    registry: &crate::connections::Connections,
    log: &mut crate::connections::LogEvery,
) {
    if let Some(gone) = registry.shed_oldest() {
        if log.due() {
            tracing::warn!(
                "out of file descriptors: closing the oldest idle or header-less connections to serve new clients"
            );
        }
        // Its task closes it at once; wait for the descriptor to be free.
        let _ = tokio::time::timeout(Duration::from_millis(100), gone.cancelled()).await;
        return;
    }
    if log.due() {
        tracing::warn!(
            "out of file descriptors and every connection is busy: answering new clients 503"
        );
    }
    let _reserve = registry.release_reserve();
    let accepted = tokio::time::timeout(Duration::from_millis(10), listener.accept()).await;
    if let Ok(Ok((stream, _))) = accepted {
        registry.refused();
        let _ = stream.try_write(crate::connections::NO_ROOM_RESPONSE);
    } else {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Ollama API version vllama implements (its `/v1/messages`, `/v1/responses`, logprobs,
/// `truncate` and `shift`): clients that gate features on the server's version read this.
pub const OLLAMA_API_VERSION: &str = "0.14.0";

#[derive(Serialize)]
struct Version {
    version: &'static str,
    /// vllama's own version (also the `X-Vllama-Version` header).
    vllama_version: &'static str,
}

async fn handle(
    mut req: Request<RequestBody>,
    daemon: &Daemon,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let id = request_id::of(req.headers());
    req.headers_mut()
        .insert(request_id::HEADER, request_id::value(&id));
    let config = daemon.config();
    let client =
        crate::forwarded::client(peer.ip(), req.headers(), &config.config.api.trusted_proxies);
    let origin = observe::Origin {
        client: crate::ip_text::text(client),
        method: req.method().clone(),
        uri: req.uri().clone(),
    };
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        client = %origin.client,
        method = %req.method(),
        path = %req.uri().path(),
        model = tracing::field::Empty,
        key = tracing::field::Empty,
        key_name = tracing::field::Empty,
    );
    let observed = observe::Request::new(
        id.clone(),
        origin,
        span.clone(),
        config
            .config
            .metrics
            .enabled
            .then(|| daemon.metrics.clone()),
        config.config.log.access,
    );
    // Boxed: the handlers' futures are kilobytes (the engine client's, the Ollama
    // translation's), and an unboxed future is copied whole each time hyper's dispatcher and
    // these wrappers move it.
    let mut resp = observed
        .scope(Box::pin(guarded(req, daemon, client)))
        .instrument(span)
        .await;
    resp.headers_mut()
        .insert(request_id::HEADER, request_id::value(&id));
    observed.responded(resp.status().as_u16());
    resp
}

/// Whether a request may pass with no key although keys are in force: what clients probe
/// (`GET /`, `/api/version`), load balancers' checks (`/health`), and `/metrics` when `metrics.require_key` is off.
fn open_route(req: &Request<RequestBody>, daemon: &Daemon) -> bool {
    match req.uri().path() {
        "/" => matches!(*req.method(), Method::GET | Method::HEAD),
        "/api/version" | "/health" => true,
        "/metrics" => !daemon.config().config.metrics.require_key,
        _ => false,
    }
}

/// The key a request presents, when keys are in force (`None`: none are, or the route is
/// open); the span gets its id and name.
fn authenticate(
    req: &Request<RequestBody>,
    daemon: &Daemon,
) -> Result<Option<Arc<crate::keys::Key>>, crate::keys::Denied> {
    let keys = daemon.keys();
    if keys.is_empty() || open_route(req, daemon) {
        return Ok(None);
    }
    let key = keys.check(req.headers())?;
    if let Some(observed) = observe::current() {
        observed.key(&key);
    }
    Ok(Some(key))
}

/// A refusal for the request's key: counted, logged (at most once per 10 s), answered 401
/// (403 for a model the key may not use) in the route's dialect.
/// The request span names the client (`client=`), so the log line does too.
fn refuse(daemon: &Daemon, path: &str, denied: &crate::keys::Denied) -> Response<Body> {
    daemon.metrics.auth_failure(denied.reason());
    let due = daemon.auth_log.lock().map(|mut l| l.due()).unwrap_or(true);
    if due {
        tracing::warn!(
            reason = denied.reason(),
            "request refused: {} (logged at most once per 10 s; vllama_auth_failures_total counts them all)",
            denied.message()
        );
    }
    let status = match denied {
        crate::keys::Denied::Model(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut resp = error_for(path, status, denied.message());
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// Counts the request against its key's limits, or with no keys its client address's
/// (`api.client_limits`), and names its tenant for fair turns at the engine.
fn admit(
    daemon: &Daemon,
    key: Option<&crate::keys::Key>,
    client: IpAddr,
    req: &Request<RequestBody>,
) -> Result<(), crate::limits::Limited> {
    let Some(observed) = observe::current() else {
        return Ok(());
    };
    let admitted = match key {
        Some(key) => {
            observed.tenant(Arc::from(key.record.id.as_str()));
            Some(key.admit()?)
        }
        None => {
            observed.tenant(Arc::from(["ip:", observed.client()].concat()));
            let limits = daemon.config().config.api.client_limits;
            let counted = limits.any() && daemon.keys().is_empty() && !open_route(req, daemon);
            counted
                .then(|| daemon.clients.admit(client, limits.limits()))
                .transpose()?
        }
    };
    if let Some(admitted) = admitted {
        observed.admitted(admitted);
    }
    Ok(())
}

/// 429 with `Retry-After`, in the route's dialect: the key (or client) is over a limit.
fn over_limit(daemon: &Daemon, path: &str, limited: crate::limits::Limited) -> Response<Body> {
    daemon.metrics.rejected("", limited.reason());
    tracing::debug!(limit = limited.limit, "over a limit: {}", limited.message());
    let mut resp = error_for(path, StatusCode::TOO_MANY_REQUESTS, limited.message());
    let secs = limited.retry_after.as_secs().max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    resp
}

/// A key restricted to some models may use the one this body names (or an alias of one).
fn model_allowed(
    key: &crate::keys::Key,
    body: &[u8],
    aliases: &crate::aliases::Aliases,
) -> Result<(), crate::keys::Denied> {
    let Some(named) = crate::keys::model_in(body) else {
        return Ok(());
    };
    let Ok(name) = crate::models::ModelName::parse(&named) else {
        return Ok(()); // the route refuses it as it would without a key
    };
    if key.may_use(&name, aliases) {
        Ok(())
    } else {
        Err(crate::keys::Denied::Model(named))
    }
}

/// Host and Origin checks (CORS), the API key and the limits, then the route.
async fn guarded(req: Request<RequestBody>, daemon: &Daemon, client: IpAddr) -> Response<Body> {
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
    let key = match authenticate(&req, daemon) {
        Ok(key) => key,
        Err(denied) => return refuse(daemon, req.uri().path(), &denied),
    };
    if let Err(limited) = admit(daemon, key.as_deref(), client, &req) {
        return over_limit(daemon, req.uri().path(), limited);
    }
    let mut resp = route(req, daemon, config.config.api.max_request_body.0, key).await;
    if let Some(o) = origin {
        if let Ok(v) = HeaderValue::from_str(&o) {
            resp.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
            resp.headers_mut()
                .insert(VARY, HeaderValue::from_static("Origin"));
        }
    }
    resp
}

fn preflight(origin: &str, req: &Request<RequestBody>) -> Response<Body> {
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

/// `/metrics` is on the API listener unless it is off or has its own.
fn metrics_here(daemon: &Daemon) -> bool {
    let m = &daemon.config().config.metrics;
    m.enabled
        && m.listen.is_none()
        && !daemon
            .listeners
            .iter()
            .any(|l| l.name == crate::listeners::METRICS)
}

async fn route(
    req: Request<RequestBody>,
    daemon: &Daemon,
    limit: u64,
    key: Option<Arc<crate::keys::Key>>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let idle = daemon.config().config.api.header_read_timeout.0;
    let (parts, body) = match http::read_body(req, limit, idle).await {
        Ok(read) => read,
        Err(BodyError::TooLarge { limit }) => {
            let mut resp = error_for(
                &path,
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
        Err(e @ BodyError::Stalled(_)) => {
            let mut resp = error_for(&path, StatusCode::REQUEST_TIMEOUT, e.to_string());
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Err(e @ BodyError::Read(_)) => {
            return error_for(&path, StatusCode::BAD_REQUEST, e.to_string())
        }
    };
    let mut parts = parts;
    if let Some(key) = key.filter(|k| k.restricted()) {
        if let Err(denied) = model_allowed(&key, &body, daemon.scheduler.aliases()) {
            return refuse(daemon, &path, &denied);
        }
        parts.extensions.insert(crate::keys::Restricted(key));
    }
    use crate::openai::Dialect;
    if let Some((id, cancel)) = stored_response(&path) {
        if (method == Method::GET && !cancel) || (method == Method::POST && cancel) {
            return crate::openai::responses::stored(daemon, parts, id).await;
        }
    }
    match (path.as_str(), &method) {
        ("/", &Method::GET | &Method::HEAD) => {
            with_version(http::text(StatusCode::OK, "Ollama is running"))
        }
        ("/api/version", &Method::GET | &Method::HEAD) => with_version(http::json(
            StatusCode::OK,
            &Version {
                version: OLLAMA_API_VERSION,
                vllama_version: crate::VERSION,
            },
        )),
        ("/metrics", &Method::GET) if metrics_here(daemon) => crate::scrape::respond(daemon).await,
        ("/health", &Method::GET | &Method::HEAD) => crate::health::respond(daemon),
        (
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/responses"
            | "/tokenize"
            | "/detokenize",
            &Method::POST,
        ) => crate::openai::forward(daemon, parts, body, Dialect::OpenAi).await,
        ("/v1/messages" | "/v1/messages/count_tokens", &Method::POST) => {
            crate::openai::forward(daemon, parts, body, Dialect::Anthropic).await
        }
        ("/" | "/api/version", _) => http::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}"),
        ),
        _ => match crate::ollama::route(daemon, &parts, body).await {
            Some(resp) => resp,
            None => error_for(
                &path,
                StatusCode::NOT_FOUND,
                format!("no route for {method} {path}"),
            ),
        },
    }
}

/// An error in the dialect of the path: Anthropic's under `/v1/messages`, OpenAI's under
/// `/v1/` (their SDKs show only the status of an error not in their shape), else Ollama's.
fn error_for(path: &str, status: StatusCode, message: String) -> Response<Body> {
    use crate::openai::Dialect;
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic.error(status, message, "")
    } else if path.starts_with("/v1/") {
        let kind = if status == StatusCode::NOT_FOUND {
            "invalid_request_error"
        } else {
            crate::openai::dialect::openai_type(status)
        };
        Dialect::OpenAi.error(status, message, kind)
    } else {
        http::error(status, message)
    }
}

/// `/v1/responses/{id}` → (id, false); `/v1/responses/{id}/cancel` → (id, true).
fn stored_response(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, cancel) = match rest.strip_suffix("/cancel") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    (!id.is_empty() && !id.contains('/')).then_some((id, cancel))
}

/// `X-Vllama-Version` on the probe routes: how `vllamactl doctor` (and a person with curl)
/// tells vllama from an Ollama holding the same port.
fn with_version(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert("x-vllama-version", HeaderValue::from_static(crate::VERSION));
    resp
}
