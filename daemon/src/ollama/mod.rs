//! The Ollama API (`/api/*`) and OpenAI's model listing (`/v1/models`), in Ollama's exact
//! shapes: NDJSON streams by default, `{"error": "..."}` errors with Ollama's statuses and
//! wording, durations in nanoseconds.

pub(crate) mod chunk;
pub mod generation;
pub(crate) mod outbound;
mod reply;
pub(crate) mod request;
mod store;
pub mod translate;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::engine::Phase;
use crate::http::{self, Body, Parts, Reject};
use crate::model_info::ModelInfo;
use crate::models::{self, ModelName};
use crate::scheduler::SchedError;
use crate::state::{rfc3339, Daemon};
use crate::units::KeepAlive;
use generation::{Job, Kind};
use outbound::{EngineRequest, Input};

/// Answers an Ollama or model-listing route, or `None` when the path is not one.
pub async fn route(daemon: &Daemon, parts: &Parts, body: Bytes) -> Option<Response<Body>> {
    let path = parts.uri.path();
    let method = &parts.method;
    let started = Instant::now();
    let result = match (method, path) {
        (&Method::POST, "/api/chat") => chat(daemon, &body, started).await,
        (&Method::POST, "/api/generate") => generate(daemon, &body, started).await,
        (&Method::POST, "/api/embed") => embed(daemon, &body, started, false).await,
        (&Method::POST, "/api/embeddings") => embed(daemon, &body, started, true).await,
        (&Method::GET | &Method::HEAD, "/api/tags") => tags(daemon, parts).await,
        (&Method::POST, "/api/show") => show(daemon, &body).await,
        (&Method::GET | &Method::HEAD, "/api/ps") => ps(daemon, parts).await,
        (&Method::GET | &Method::HEAD, "/v1/models") => openai_models(daemon, parts, None).await,
        (&Method::GET | &Method::HEAD, p) if p.starts_with("/v1/models/") => {
            openai_models(daemon, parts, p.strip_prefix("/v1/models/")).await
        }
        (&Method::POST, "/api/pull") => store::pull(daemon, &body).await,
        (&Method::DELETE, "/api/delete") => store::delete(daemon, &body).await,
        (&Method::POST, "/api/copy") => store::copy(daemon, &body).await,
        (&Method::POST, "/api/create") | (&Method::POST, "/api/push") => Err(not_supported()),
        (_, p) if p.starts_with("/api/blobs/") => Err(not_supported()),
        _ => return None,
    };
    Some(result.unwrap_or_else(Response::from))
}

fn not_supported() -> Reject {
    Reject(
        StatusCode::NOT_IMPLEMENTED,
        "vllama serves Hugging Face models (safetensors) on vLLM; Modelfiles, GGUF blobs and pushing are not supported. Add a model as [models.\"NAME\"] in /etc/vllama/vllama.toml, or pull it by its repository name (org/name)".into(),
    )
}

/// The body as a JSON object; a syntax error says where.
fn object(body: &[u8]) -> Result<Map<String, Value>, Reject> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reject(
            StatusCode::BAD_REQUEST,
            "missing request body".into(),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Reject(
            StatusCode::BAD_REQUEST,
            "the request body must be a JSON object".into(),
        )),
        Err(e) => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )),
    }
}

fn model_of(req: &Map<String, Value>) -> Result<(String, ModelName), Reject> {
    match req.get("model").or_else(|| req.get("name")) {
        Some(Value::String(s)) => model_named(s),
        None | Some(Value::Null) => model_named(""),
        Some(other) => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("model must be a string, not {other}"),
        )),
    }
}

/// The model a request names (`raw`, trimmed), checked and parsed.
fn model_named(raw: &str) -> Result<(String, ModelName), Reject> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Reject(StatusCode::BAD_REQUEST, "model is required".into()));
    }
    let name = ModelName::parse(raw).map_err(|e| Reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    crate::observe::requested(&name);
    Ok((raw.to_string(), name))
}

fn keep_alive_of(req: &Map<String, Value>) -> Result<Option<KeepAlive>, Reject> {
    keep_alive_value(req.get("keep_alive"))
}

fn keep_alive_value(keep_alive: Option<&Value>) -> Result<Option<KeepAlive>, Reject> {
    match keep_alive {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value::<KeepAlive>(v.clone())
            .map(Some)
            .map_err(|e| {
                Reject(
                    StatusCode::BAD_REQUEST,
                    format!("invalid keep_alive {v}: {e}"),
                )
            }),
    }
}

fn bool_of(req: &Map<String, Value>, key: &str, default: bool) -> Result<bool, Reject> {
    bool_value(key, req.get(key), default)
}

fn bool_value(key: &str, value: Option<&Value>, default: bool) -> Result<bool, Reject> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("{key} must be true or false, not {other}"),
        )),
    }
}

fn str_of<'a>(req: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Reject> {
    str_value(key, req.get(key))
}

fn str_value<'a>(key: &str, value: Option<&'a Value>) -> Result<Option<&'a str>, Reject> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Reject(
            StatusCode::BAD_REQUEST,
            format!("{key} must be a string, not {other}"),
        )),
    }
}

/// `truncate` (default true) and `shift`. vLLM cannot shift the context while it generates:
/// an answer stops at the context's end (`done_reason: "length"`) whatever `shift` says, so
/// `shift` is only checked.
fn truncate_value(shift: Option<&Value>, truncate: Option<&Value>) -> Result<bool, Reject> {
    bool_value("shift", shift, true)?;
    bool_value("truncate", truncate, true)
}

/// `options.num_ctx`, when a client asks for a context size.
fn num_ctx_of(options: Option<&Value>) -> Option<u32> {
    options?
        .get("num_ctx")?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
}

fn bad(e: translate::Invalid) -> Reject {
    Reject(StatusCode::BAD_REQUEST, e.0)
}

fn sched(e: SchedError) -> Reject {
    Reject(e.status().0, e.to_string())
}

/// Empty prompt/messages: load the model (or unload it with keep_alive 0), Ollama-style.
async fn load_or_unload(
    daemon: &Daemon,
    kind: Kind,
    raw: &str,
    name: &ModelName,
    keep_alive: Option<KeepAlive>,
    started: Instant,
) -> Result<Response<Body>, Reject> {
    let reason = if keep_alive == Some(KeepAlive::For(std::time::Duration::ZERO)) {
        daemon
            .scheduler
            .unload_when_idle(name)
            .await
            .map_err(sched)?;
        "unload"
    } else {
        drop(
            daemon
                .scheduler
                .load(name, keep_alive)
                .await
                .map_err(sched)?,
        );
        "load"
    };
    let mut o = Map::new();
    o.insert("model".into(), json!(raw));
    o.insert("created_at".into(), json!(reply::Now));
    match kind {
        Kind::Chat => o.insert(
            "message".into(),
            json!({"role": "assistant", "content": ""}),
        ),
        Kind::Generate { .. } => o.insert("response".into(), json!("")),
    };
    o.insert("done".into(), json!(true));
    o.insert("done_reason".into(), json!(reason));
    o.insert(
        "total_duration".into(),
        json!(started.elapsed().as_nanos() as u64),
    );
    Ok(http::json(StatusCode::OK, &o))
}

/// What a request needs of its model, checked before any engine starts, in Ollama's
/// wording (clients match on "does not support …" and retry without the feature).
#[derive(Debug, Default, Clone, Copy)]
struct Needs {
    images: usize,
    tools: bool,
    thinking: bool,
}

async fn model_info(daemon: &Daemon, name: &ModelName) -> Result<Arc<ModelInfo>, Reject> {
    daemon.scheduler.model_info(name).await.map_err(sched)
}

fn check(needs: Needs, info: &ModelInfo, raw: &str) -> Result<(), Reject> {
    let refuse = |msg: String| Err(Reject(StatusCode::BAD_REQUEST, msg));
    if needs.images > 0 && !info.vision {
        return refuse(format!(
            "model \"{raw}\" does not support images (it is not a vision model)"
        ));
    }
    if needs.tools && !info.profile.tools() {
        return refuse(format!(
            "{raw} does not support tools (no tool-call parser for its family `{}`: set \
             [models.\"{raw}\"] tool_parser if its template has tool calls; see docs/MODELS.md)",
            info.profile.family
        ));
    }
    if needs.thinking && !info.profile.thinking() {
        return refuse(format!("\"{raw}\" does not support thinking"));
    }
    Ok(())
}

async fn chat(daemon: &Daemon, body: &[u8], started: Instant) -> Result<Response<Body>, Reject> {
    let req = request::Request::read(body, request::Route::Chat)?;
    let (raw, name, keep_alive) = (req.model, req.name, req.keep_alive);
    let mut oai = Map::new();
    translate::options(req.options.as_ref(), &mut oai).map_err(bad)?;
    translate::format(req.format.as_ref(), &mut oai).map_err(bad)?;
    let top_logprobs =
        translate::logprobs(req.logprobs.as_ref(), req.top_logprobs.as_ref()).map_err(bad)?;
    translate::ask_logprobs(top_logprobs, true, &mut oai);
    let truncate = truncate_value(req.shift.as_ref(), req.truncate.as_ref())?;
    let tools = match req.tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(tools)) if tools.is_empty() => None,
        Some(Value::Array(tools)) => Some(tools),
        Some(_) => {
            return Err(Reject(
                StatusCode::BAD_REQUEST,
                "tools must be a list".into(),
            ))
        }
    };
    let thinking = translate::Thinking::parse(req.think.as_ref()).map_err(bad)?;
    let needs_tools = tools.is_some();
    if let Some(tools) = tools {
        oai.insert("tools".into(), Value::Array(tools));
    }
    let mut needs = Needs {
        thinking: thinking.wanted(),
        tools: needs_tools,
        ..Needs::default()
    };
    if let Some(template) = str_value("template", req.template.as_ref())?.filter(|t| !t.is_empty())
    {
        oai.insert("chat_template".into(), json!(template));
    }
    if req.messages.is_empty() {
        return load_or_unload(daemon, Kind::Chat, &raw, &name, keep_alive, started).await;
    }
    // the texts passed on as the client wrote them (typed read) or moved (tree read): a
    // chat's history can be most of its bytes
    let (msgs, images) = translate::messages(req.messages).map_err(bad)?;
    let mut request = EngineRequest {
        input: Input::Messages(msgs),
        params: oai,
    };
    needs.images = images;
    let info = model_info(daemon, &name).await?;
    check(needs, &info, &raw)?;
    translate::think(thinking, info.profile.think, &mut request.params);
    let lease = daemon
        .scheduler
        .acquire_with_context(&name, keep_alive, num_ctx_of(req.options.as_ref()))
        .await
        .map_err(sched)?;
    let job = Job {
        kind: Kind::Chat,
        model: raw,
        stream: req.stream,
        want_context: false,
        truncate,
        stall_timeout: daemon.config().config.engine.stall_timeout.0,
        started,
    };
    Ok(generation::run(job, request, lease, &daemon.tasks).await)
}

async fn generate(
    daemon: &Daemon,
    body: &[u8],
    started: Instant,
) -> Result<Response<Body>, Reject> {
    let mut req = request::Request::read(body, request::Route::Generate)?;
    let (raw_name, name, keep_alive, raw) = (req.model, req.name, req.keep_alive, req.raw);
    let prompt = req
        .prompt
        .take()
        .unwrap_or(outbound::Content::Text(Cow::Borrowed("")));
    let system = req.system.take();
    if req.suffix.as_ref().is_some_and(|s| !s.as_str().is_empty()) {
        return Err(Reject(
            StatusCode::BAD_REQUEST,
            "suffix (fill-in-the-middle) is not supported: vLLM's API has no insertion mode".into(),
        ));
    }
    let mut oai = Map::new();
    translate::options(req.options.as_ref(), &mut oai).map_err(bad)?;
    translate::format(req.format.as_ref(), &mut oai).map_err(bad)?;
    let top_logprobs =
        translate::logprobs(req.logprobs.as_ref(), req.top_logprobs.as_ref()).map_err(bad)?;
    translate::ask_logprobs(top_logprobs, !raw, &mut oai);
    let truncate = truncate_value(req.shift.as_ref(), req.truncate.as_ref())?;
    let has_images = matches!(&req.images, Some(Value::Array(a)) if !a.is_empty());
    if prompt.is_empty() && !has_images {
        return load_or_unload(
            daemon,
            Kind::Generate { raw },
            &raw_name,
            &name,
            keep_alive,
            started,
        )
        .await;
    }
    let mut thinking = translate::Thinking::Unset;
    let (input, images) = if raw {
        if has_images {
            return Err(Reject(
                StatusCode::BAD_REQUEST,
                "images cannot be sent with raw: true".into(),
            ));
        }
        (Input::Prompt(prompt), 0)
    } else {
        thinking = translate::Thinking::parse(req.think.as_ref()).map_err(bad)?;
        if let Some(template) =
            str_value("template", req.template.as_ref())?.filter(|t| !t.is_empty())
        {
            oai.insert("chat_template".into(), json!(template));
        }
        let (msgs, images) =
            translate::generate_messages(system, prompt, req.images.as_ref()).map_err(bad)?;
        (Input::Messages(msgs), images)
    };
    let mut request = EngineRequest { input, params: oai };
    let needs = Needs {
        images,
        thinking: thinking.wanted(),
        tools: false,
    };
    let info = model_info(daemon, &name).await?;
    check(needs, &info, &raw_name)?;
    translate::think(thinking, info.profile.think, &mut request.params);
    let lease = daemon
        .scheduler
        .acquire_with_context(&name, keep_alive, num_ctx_of(req.options.as_ref()))
        .await
        .map_err(sched)?;
    let job = Job {
        kind: Kind::Generate { raw },
        model: raw_name,
        stream: req.stream,
        want_context: !raw,
        truncate,
        stall_timeout: daemon.config().config.engine.stall_timeout.0,
        started,
    };
    Ok(generation::run(job, request, lease, &daemon.tasks).await)
}

async fn embed(
    daemon: &Daemon,
    body: &[u8],
    started: Instant,
    legacy: bool,
) -> Result<Response<Body>, Reject> {
    let req = object(body)?;
    let (raw, name) = model_of(&req)?;
    let keep_alive = keep_alive_of(&req)?;
    let field = if legacy { "prompt" } else { "input" };
    let inputs: Vec<String> = match req.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Reject(
                    StatusCode::BAD_REQUEST,
                    format!("{field} must be a string or a list of strings"),
                )
            })?,
        Some(_) => {
            return Err(Reject(
                StatusCode::BAD_REQUEST,
                format!("{field} must be a string or a list of strings"),
            ))
        }
    };
    let lease = daemon
        .scheduler
        .acquire(&name, keep_alive)
        .await
        .map_err(sched)?;
    let load = lease.load_duration;
    if inputs.is_empty() {
        let o = if legacy {
            json!({"embedding": []})
        } else {
            json!({"model": raw, "embeddings": [], "total_duration": started.elapsed().as_nanos() as u64, "load_duration": load.as_nanos() as u64, "prompt_eval_count": 0})
        };
        return Ok(http::json(StatusCode::OK, &o));
    }
    let mut oai = serde_json::Map::new();
    oai.insert("model".into(), json!(lease.served_name()));
    oai.insert("input".into(), json!(inputs));
    oai.insert("encoding_format".into(), json!("float"));
    if !legacy {
        if bool_of(&req, "truncate", true)? {
            oai.insert("truncate_prompt_tokens".into(), json!(-1));
        }
        match req.get("dimensions") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|d| d > 0) => {
                oai.insert("dimensions".into(), json!(n));
            }
            Some(other) => {
                return Err(Reject(
                    StatusCode::BAD_REQUEST,
                    format!("dimensions must be a positive integer, not {other}"),
                ))
            }
        }
    }
    let mut engine_req = Request::new(Bytes::from(serde_json::to_vec(&oai).unwrap_or_default()));
    *engine_req.method_mut() = Method::POST;
    *engine_req.uri_mut() = hyper::Uri::from_static("/v1/embeddings");
    engine_req.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(id) = crate::observe::request_id() {
        engine_req
            .headers_mut()
            .insert(crate::request_id::HEADER, crate::request_id::value(&id));
    }
    let resp = lease
        .engine()
        .client()
        .send(engine_req)
        .await
        .map_err(|e| {
            Reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the engine for {raw} failed: {e}"),
            )
        })?;
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = answer
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("embedding failed");
        let status = if status.as_u16() == 400 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Err(Reject(status, format!("{raw}: {msg}")));
    }
    let mut data: Vec<&Value> = answer
        .get("data")
        .and_then(Value::as_array)
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    data.sort_by_key(|d| d.get("index").and_then(Value::as_u64).unwrap_or(0));
    let embeddings: Vec<Value> = data.iter().map(|d| d["embedding"].clone()).collect();
    let o = if legacy {
        json!({"embedding": embeddings.first().cloned().unwrap_or(json!([]))})
    } else {
        json!({"model": raw, "embeddings": embeddings, "total_duration": started.elapsed().as_nanos() as u64,
               "load_duration": load.as_nanos() as u64, "prompt_eval_count": answer.pointer("/usage/prompt_tokens")})
    };
    Ok(http::json(StatusCode::OK, &o))
}

/// Every model this daemon can serve: configured ones and those in the store.
async fn catalog(daemon: &Daemon) -> Vec<(String, Arc<ModelInfo>)> {
    let config = daemon.config().config.clone();
    let aliases = daemon.scheduler.aliases().clone();
    tokio::task::spawn_blocking(move || {
        let mut out: Vec<(String, Arc<ModelInfo>)> = Vec::new();
        for (name, m) in &config.models {
            let Ok(n) = ModelName::parse(name) else {
                continue;
            };
            if let Ok(info) = models::info_of(&config.paths.state_dir, &n, m) {
                out.push((n.to_string(), Arc::new(info)));
            }
        }
        let hub = config.paths.state_dir.join("hub");
        for m in crate::store::list(&hub, &aliases) {
            let dir = crate::store::layout::RepoDir::new(&hub, &m.repo).snapshot(&m.commit);
            if out.iter().any(|(_, i)| i.dir == dir) {
                continue;
            }
            if let Ok(info) = ModelInfo::read(&dir) {
                let name = ModelName::parse(&m.name).map_or(m.name, |n| n.to_string());
                out.push((name, Arc::new(info)));
            }
        }
        // Aliases (`/api/copy`) are listed under their own names.
        for (alias, target) in aliases.all() {
            if let Some((_, info)) = out.iter().find(|(n, _)| *n == target).cloned() {
                out.push((alias, info));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    })
    .await
    .unwrap_or_default()
}

async fn tags(daemon: &Daemon, parts: &Parts) -> Result<Response<Body>, Reject> {
    let models: Vec<Value> = catalog(daemon)
        .await
        .iter()
        .filter(|(name, _)| crate::keys::visible(&parts.extensions, name, daemon.scheduler.aliases()))
        .map(|(name, info)| {
            json!({"name": name, "model": name, "modified_at": rfc3339(info.modified_at), "size": info.size,
                   "digest": info.digest, "details": info.details(), "capabilities": info.capabilities()})
        })
        .collect();
    Ok(http::json(StatusCode::OK, &json!({"models": models})))
}

async fn show(daemon: &Daemon, body: &[u8]) -> Result<Response<Body>, Reject> {
    let req = object(body)?;
    let (_, name) = model_of(&req)?;
    let active = daemon.config();
    let (canonical, model) = models::lookup(&active.config, daemon.scheduler.aliases(), &name)
        .map_err(|e| Reject(StatusCode::NOT_FOUND, e.to_string()))?;
    let (state_dir, model) = (active.config.paths.state_dir.clone(), model.into_owned());
    let info = tokio::task::spawn_blocking(move || models::info_of(&state_dir, &canonical, &model))
        .await
        .map_err(|e| Reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Reject(StatusCode::NOT_FOUND, e.to_string()))?;
    let mut model_info = Map::new();
    model_info.insert("general.architecture".into(), json!(info.family));
    model_info.insert("general.basename".into(), json!(info.architecture));
    model_info.insert(
        "general.parameter_count".into(),
        json!(info.parameter_count),
    );
    if let Some(ctx) = info.context_length {
        model_info.insert(format!("{}.context_length", info.family), json!(ctx));
    }
    let o = json!({
        "license": "",
        "modelfile": format!("# vllama serves this model on vLLM from {}\nFROM {}\n", info.dir.display(), info.dir.display()),
        "parameters": "",
        "template": info.template.clone().unwrap_or_default(),
        "details": info.details(),
        "model_info": model_info,
        "capabilities": info.capabilities(),
        "modified_at": rfc3339(info.modified_at),
    });
    Ok(http::json(StatusCode::OK, &o))
}

async fn ps(daemon: &Daemon, parts: &Parts) -> Result<Response<Body>, Reject> {
    let mut models = Vec::new();
    let engines = daemon.scheduler.engines().into_iter();
    for view in engines
        .filter(|v| crate::keys::visible(&parts.extensions, &v.model, daemon.scheduler.aliases()))
    {
        // Loaded models only, as Ollama lists them: not failed or stopping engines.
        if !matches!(view.phase, Phase::Starting | Phase::Ready | Phase::Sleeping) {
            continue;
        }
        let Some(info) = view.info.clone() else {
            continue;
        };
        let vram = match view.pid {
            Some(pid) => daemon.scheduler.gpu_memory_of(pid).await,
            None => 0,
        };
        // Idle: when its timer ends. Busy: keep_alive after now, at the earliest. Kept
        // forever: a time far in the future, as Ollama shows it.
        let expires = match (view.expires_at, view.keep_alive) {
            (Some(at), _) => at,
            (None, KeepAlive::For(after)) => SystemTime::now() + after,
            (None, KeepAlive::Forever) => {
                UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799)
            }
        };
        models.push(json!({
            "name": view.model, "model": view.model, "size": info.size.max(vram), "digest": info.digest,
            "details": info.details(), "expires_at": rfc3339(expires), "size_vram": vram,
            "context_length": info.context_length,
        }));
    }
    Ok(http::json(StatusCode::OK, &json!({"models": models})))
}

async fn openai_models(
    daemon: &Daemon,
    parts: &Parts,
    one: Option<&str>,
) -> Result<Response<Body>, Reject> {
    let listed: Vec<Value> = catalog(daemon)
        .await
        .iter()
        .filter(|(name, _)| {
            crate::keys::visible(&parts.extensions, name, daemon.scheduler.aliases())
        })
        .map(|(name, info)| {
            let created = info
                .modified_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            // `capabilities` beside OpenAI's fields (clients ignore what they do not know).
            json!({"id": name, "object": "model", "created": created, "owned_by": "vllama",
                   "capabilities": info.capabilities()})
        })
        .collect();
    match one {
        None => Ok(http::json(
            StatusCode::OK,
            &json!({"object": "list", "data": listed}),
        )),
        Some(id) => {
            let wanted = ModelName::parse(id)
                .map(|n| n.to_string())
                .unwrap_or_else(|_| id.to_string());
            match listed
                .into_iter()
                .find(|m| m["id"] == id || m["id"] == wanted)
            {
                Some(m) => Ok(http::json(StatusCode::OK, &m)),
                None => Ok(crate::openai::error(
                    StatusCode::NOT_FOUND,
                    format!("The model `{id}` does not exist."),
                    "invalid_request_error",
                )),
            }
        }
    }
}
