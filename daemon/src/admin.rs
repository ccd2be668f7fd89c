//! The admin API on the `admin` Unix socket: status and reload for `vllamactl`. Every
//! connection's peer is identified by the kernel; each route needs a [`Role`].

use std::sync::Arc;

use crate::h1::RequestBody;
use hyper::{Method, Request, Response, StatusCode};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use bytes::Bytes;
use tokio::sync::watch;
use vllama_proto::{
    EngineInstallRequest, InstallProgress, KeyAddRequest, KeyAdded, KeyInfo, KeyRemoveRequest,
    PreloadEvent, PreloadRequest, PullProgress, PullRequest, RemoveRequest, UnloadRequest,
    DOCTOR_PATH, ENGINES_PATH, ENGINE_INSTALL_PATH, ENGINE_PATH, KEYS_PATH, KEY_REMOVE_PATH,
    MODELS_PATH, PRELOAD_PATH, PULL_PATH, RELOAD_PATH, REMOVE_PATH, STATUS_PATH, UNLOAD_PATH,
};

use crate::models::ModelName;
use crate::scheduler::SchedError;
use crate::state::engine_info;
use crate::units::KeepAlive;

use crate::auth::{Peer, Role};
use crate::http::{self, Body, Reject};
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
                    crate::http::accept_failed(&e).await;
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
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take over an admin connection");
                    continue;
                }
            };
            let daemon = daemon.clone();
            let timeout = daemon.config().config.api.header_read_timeout.0;
            let handler = move |req| {
                let daemon = daemon.clone();
                let peer = peer.clone();
                async move { handle(req, &daemon, &peer).await }
            };
            http::spawn_connection(
                &conns,
                None,
                shutdown.clone(),
                stream,
                timeout,
                None,
                handler,
            );
        }
        tracing::debug!("admin listener closed");
    });
}

async fn handle(req: Request<RequestBody>, daemon: &Daemon, peer: &Peer) -> Response<Body> {
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
    Engines,
    Reload,
    Preload,
    Unload,
    Pull,
    Models,
    Remove,
    Engine,
    EngineInstall,
    Doctor,
    Keys,
    KeyAdd,
    KeyRemove,
}

impl Route {
    fn needs(self) -> Role {
        match self {
            Route::Status
            | Route::Engines
            | Route::Models
            | Route::Engine
            | Route::Doctor
            | Route::Keys => Role::Read,
            Route::Reload
            | Route::Preload
            | Route::Unload
            | Route::Pull
            | Route::Remove
            | Route::EngineInstall
            | Route::KeyAdd
            | Route::KeyRemove => Role::Admin,
        }
    }

    fn find(path: &str, method: &Method) -> Result<Route, Reject> {
        let (route, allowed) = match path {
            STATUS_PATH => (Route::Status, Method::GET),
            ENGINES_PATH => (Route::Engines, Method::GET),
            RELOAD_PATH => (Route::Reload, Method::POST),
            PRELOAD_PATH => (Route::Preload, Method::POST),
            UNLOAD_PATH => (Route::Unload, Method::POST),
            PULL_PATH => (Route::Pull, Method::POST),
            MODELS_PATH => (Route::Models, Method::GET),
            REMOVE_PATH => (Route::Remove, Method::POST),
            ENGINE_PATH => (Route::Engine, Method::GET),
            ENGINE_INSTALL_PATH => (Route::EngineInstall, Method::POST),
            KEYS_PATH if *method == Method::GET => (Route::Keys, Method::GET),
            KEYS_PATH => (Route::KeyAdd, Method::POST),
            KEY_REMOVE_PATH => (Route::KeyRemove, Method::POST),
            DOCTOR_PATH => (Route::Doctor, Method::GET),
            other => {
                return Err(Reject(
                    StatusCode::NOT_FOUND,
                    format!("no admin route {method} {other}"),
                ))
            }
        };
        if *method != allowed {
            return Err(Reject(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path}; use {allowed}"),
            ));
        }
        Ok(route)
    }
}

async fn route(
    req: Request<RequestBody>,
    daemon: &Daemon,
    peer: &Peer,
    role: Role,
) -> Response<Body> {
    let route = match Route::find(req.uri().path(), req.method()) {
        Ok(route) => route,
        Err(reject) => return reject.into(),
    };
    if role < route.needs() {
        let access = &daemon.config().access;
        return http::error(StatusCode::FORBIDDEN, access.refusal(route.needs(), peer));
    }
    let idle = daemon.config().config.api.header_read_timeout.0;
    let body = match http::read_body(req, MAX_ADMIN_BODY, idle).await {
        Ok((_, body)) => body,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match route {
        Route::Status => http::json(StatusCode::OK, &daemon.status()),
        Route::Engines => {
            let engines: Vec<_> = daemon.scheduler.engines().iter().map(engine_info).collect();
            http::json(StatusCode::OK, &engines)
        }
        Route::Reload => {
            let outcome = crate::reload::reload(daemon).await;
            let status = if outcome.applied {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            http::json(status, &outcome)
        }
        Route::Preload => match parse::<PreloadRequest>(&body) {
            Ok(req) => preload(daemon, req),
            Err(reject) => reject.into(),
        },
        Route::Unload => match parse::<UnloadRequest>(&body) {
            Ok(req) => unload(daemon, req).await,
            Err(reject) => reject.into(),
        },
        Route::Pull => match parse::<PullRequest>(&body) {
            Ok(req) => pull(daemon, req).await,
            Err(reject) => reject.into(),
        },
        Route::Models => http::json(StatusCode::OK, &crate::store_ops::list(daemon).await),
        Route::Remove => match parse::<RemoveRequest>(&body) {
            Ok(req) => match crate::store_ops::remove(daemon, &req.model, req.force).await {
                Ok(what) => http::json(
                    StatusCode::OK,
                    &serde_json::json!({"model": req.model, "removed": what}),
                ),
                Err(e) => store_error(&e),
            },
            Err(reject) => reject.into(),
        },
        Route::Engine => {
            let gpus = gpu_count(daemon).await;
            let config = daemon.config();
            http::json(
                StatusCode::OK,
                &crate::install::status(&config.config.engine, &daemon.installer, gpus).await,
            )
        }
        Route::EngineInstall => match parse::<EngineInstallRequest>(&body) {
            Ok(req) => engine_install(daemon, req).await,
            Err(reject) => reject.into(),
        },
        Route::Doctor => http::json(StatusCode::OK, &crate::doctor::run(daemon).await),
        Route::Keys => {
            let keys = daemon.keys();
            let list: Vec<KeyInfo> = keys.keys().iter().map(|k| key_info(k)).collect();
            http::json(StatusCode::OK, &list)
        }
        Route::KeyAdd => match parse::<KeyAddRequest>(&body) {
            Ok(req) => key_add(daemon, req).await,
            Err(reject) => reject.into(),
        },
        Route::KeyRemove => match parse::<KeyRemoveRequest>(&body) {
            Ok(req) => key_remove(daemon, req).await,
            Err(reject) => reject.into(),
        },
    }
}

fn key_info(key: &crate::keys::Key) -> KeyInfo {
    KeyInfo {
        id: key.record.id.clone(),
        name: key.record.name.clone(),
        models: key.record.models.clone(),
        created: key.record.created,
        last_used: key.last_used(),
        limits: key.record.limits,
        credential: key.from_credential(),
    }
}

fn key_error(e: &crate::keys::KeyError) -> Response<Body> {
    use crate::keys::KeyError;
    let status = match e {
        KeyError::NameTaken(_) => StatusCode::CONFLICT,
        KeyError::NoSuchKey(_) => StatusCode::NOT_FOUND,
        KeyError::FromCredential(_) => StatusCode::CONFLICT,
        KeyError::BadModel(..) | KeyError::BadName => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    http::error(status, e.to_string())
}

/// Writes the new ring to the keys file, reads it back (the file is the truth, as at a
/// start) and puts it in force: requests in flight keep the key they were let in with, the
/// next ones meet the new ring. The refusal to answer when that fails.
async fn save_keys(daemon: &Daemon, ring: crate::keys::KeyRing) -> Option<Response<Body>> {
    let path = daemon.config().config.api.keys_file.clone();
    let saved = tokio::task::spawn_blocking(move || {
        ring.save(&path)?;
        crate::keys::KeyRing::read(&path)
    })
    .await;
    match saved {
        Ok(Ok(loaded)) => {
            daemon.set_keys(loaded);
            None
        }
        Ok(Err(e)) => Some(key_error(&e)),
        Err(e) => Some(http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

async fn key_add(daemon: &Daemon, req: KeyAddRequest) -> Response<Body> {
    // One change of the keys file at a time, and none during a reload.
    let _one = daemon.reload_lock.lock().await;
    let (ring, secret, record) = match daemon.keys().with_new(&req.name, &req.models, req.limits) {
        Ok(made) => made,
        Err(e) => return key_error(&e),
    };
    if let Some(refused) = save_keys(daemon, ring).await {
        return refused;
    }
    tracing::info!(key = %record.id, key_name = %record.name, models = ?record.models, "API key added");
    let info = daemon
        .keys()
        .keys()
        .iter()
        .find(|k| k.record.id == record.id)
        .map(|k| key_info(k));
    match info {
        Some(info) => http::json(StatusCode::OK, &KeyAdded { key: secret, info }),
        None => http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the new key did not read back from the keys file",
        ),
    }
}

async fn key_remove(daemon: &Daemon, req: KeyRemoveRequest) -> Response<Body> {
    let _one = daemon.reload_lock.lock().await;
    let keys = daemon.keys();
    let (ring, gone) = match keys.without(&req.id) {
        Ok(made) => made,
        Err(e) => return key_error(&e),
    };
    if ring.is_empty() && daemon.exposed() && !daemon.config().config.api.allow_unauthenticated {
        return http::error(
            StatusCode::CONFLICT,
            "this is the last API key and the API listens on a non-loopback address: removing it would open the API to anyone (add another key first, or set api.allow_unauthenticated = true)",
        );
    }
    let info = keys
        .keys()
        .iter()
        .find(|k| k.record.id == gone.id)
        .map(|k| key_info(k));
    if let Some(refused) = save_keys(daemon, ring).await {
        return refused;
    }
    tracing::info!(key = %gone.id, key_name = %gone.name, "API key removed");
    match info {
        Some(info) => http::json(StatusCode::OK, &info),
        None => http::empty_ok(),
    }
}

/// How many GPUs the probe sees (NVML blocks: off the async threads).
async fn gpu_count(daemon: &Daemon) -> usize {
    let probe = daemon.scheduler.probe();
    tokio::task::spawn_blocking(move || probe.gpus().len())
        .await
        .unwrap_or(0)
}

/// Starts (or joins) an engine install and streams its progress as NDJSON, at most five
/// lines a second, until it is done or has failed. A client that leaves detaches.
async fn engine_install(daemon: &Daemon, req: EngineInstallRequest) -> Response<Body> {
    let gpus = gpu_count(daemon).await;
    let config = daemon.config();
    let env = crate::install::environment(&config.config.paths, std::env::vars());
    let rx = daemon
        .installer
        .start(&req, &config.config.engine, env, gpus)
        .await;
    let rx = match rx {
        Ok(rx) => rx,
        Err(e) if matches!(e, crate::install::InstallError::Busy { .. }) => {
            return http::error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e) if e.is_refusal() => return http::error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    follow(
        daemon,
        rx,
        |p: &InstallProgress| p.phase.finished(),
        |p| p.step * 8 + p.phase as usize,
    )
}

/// Streams watched progress as NDJSON until it is `finished`: a change of `milestone` (a
/// phase, a step) at once, other changes at most five a second, the last one never held
/// back. A client that leaves only detaches: the work goes on.
fn follow<T>(
    daemon: &Daemon,
    mut rx: watch::Receiver<T>,
    finished: fn(&T) -> bool,
    milestone: fn(&T) -> usize,
) -> Response<Body>
where
    T: serde::Serialize + Clone + Send + Sync + 'static,
{
    const EVERY: Duration = Duration::from_millis(200);
    let (tx, resp) = http::channel(StatusCode::OK, "application/x-ndjson");
    daemon.tasks.spawn(async move {
        loop {
            let progress = rx.borrow_and_update().clone();
            let mut line = serde_json::to_vec(&progress).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() || finished(&progress) {
                return;
            }
            let (sent, mark) = (tokio::time::Instant::now(), milestone(&progress));
            let mut held = false;
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() && !held {
                            return; // closed, nothing new: its last state went out
                        }
                        if changed.is_err() || milestone(&rx.borrow()) != mark || sent.elapsed() >= EVERY {
                            break;
                        }
                        held = true;
                    }
                    _ = tokio::time::sleep_until(sent + EVERY), if held => break,
                }
            }
        }
    });
    resp
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| {
        Reject(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn model_name(raw: &str) -> Result<ModelName, Reject> {
    ModelName::parse(raw).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))
}

fn store_error(e: &crate::store::StoreError) -> Response<Body> {
    http::error(e.status(), e.to_string())
}

/// Streams the pull's progress as NDJSON (one line per change, at most five a second) until
/// it is done or has failed. A client that leaves detaches: the pull goes on.
async fn pull(daemon: &Daemon, req: PullRequest) -> Response<Body> {
    let rx = match crate::store_ops::pull(daemon, &req.model).await {
        Ok(rx) => rx,
        Err(e) => return store_error(&e),
    };
    follow(
        daemon,
        rx,
        |p: &PullProgress| p.phase.finished(),
        |p| p.phase as usize,
    )
}

fn sched_error(e: &SchedError) -> Response<Body> {
    http::error(e.status().0, e.to_string())
}

/// Starts the model and streams its progress as NDJSON until it is ready or has failed.
fn preload(daemon: &Daemon, req: PreloadRequest) -> Response<Body> {
    let name = match model_name(&req.model) {
        Ok(n) => n,
        Err(reject) => return reject.into(),
    };
    let keep_alive = match req.keep_alive.as_deref().map(KeepAlive::parse).transpose() {
        Ok(k) => k,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, format!("keep_alive: {e}")),
    };
    let (tx, resp) = http::channel(StatusCode::OK, "application/x-ndjson");
    let scheduler = daemon.scheduler.clone();
    crate::tasks::spawn(&daemon.tasks, "preload progress", async move {
        let started = Instant::now();
        let event = |state: String, message: Option<String>, error: Option<String>| PreloadEvent {
            model: name.to_string(),
            state,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            message,
            error,
        };
        let send = |e: PreloadEvent| {
            let tx = tx.clone();
            async move {
                let mut line = serde_json::to_vec(&e).unwrap_or_default();
                line.push(b'\n');
                tx.send(Bytes::from(line)).await.is_ok()
            }
        };
        let work = scheduler.preload(&name, keep_alive);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                result = &mut work => {
                    let last = match result {
                        Ok(engine) => event("ready".into(), engine.last_output(), None),
                        Err(e) => event("failed".into(), None, Some(e.to_string())),
                    };
                    send(last).await;
                    return;
                }
                _ = tick.tick() => {
                    let (state, message) = match scheduler.engine_of(&name) {
                        Some(engine) => (engine.status().phase.to_string(), engine.last_output()),
                        None => ("placing".to_string(), None),
                    };
                    if !send(event(state, message, None)).await {
                        return; // the client left; the engine goes on starting
                    }
                }
            }
        }
    });
    resp
}

async fn unload(daemon: &Daemon, req: UnloadRequest) -> Response<Body> {
    let name = match model_name(&req.model) {
        Ok(n) => n,
        Err(reject) => return reject.into(),
    };
    let how = if req.force {
        crate::scheduler::Unload::Force
    } else {
        crate::scheduler::Unload::Drain
    };
    match daemon.scheduler.unload(&name, how).await {
        Ok(()) => http::json(
            StatusCode::OK,
            &serde_json::json!({"model": name.to_string(), "unloaded": true}),
        ),
        Err(e) => sched_error(&e),
    }
}
