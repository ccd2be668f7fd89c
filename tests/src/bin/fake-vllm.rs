//! A stand-in for `vllm serve`, for fast tests and fault injection. It accepts vLLM's
//! command line, listens on `--uds PATH` or `--host/--port`, answers `/health` 503 until its
//! start-up delay has passed, and serves the OpenAI routes, `/metrics` and the sleep
//! endpoints in the shapes the real engine uses (checked against recorded real responses
//! in `tests/tests/fake_matches_real.rs`).
//!
//! Faults, from the environment:
//! - `FAKE_VLLM_STARTUP_MS` (300): time until `/health` answers 200;
//! - `FAKE_VLLM_FAIL_STARTUP=msg`: log `msg` as an ERROR and exit 1 during start-up;
//! - `FAKE_VLLM_HANG=1`: never become healthy;
//! - `FAKE_VLLM_EXIT_AFTER=N`: exit 0 after N completions (vLLM's exit-0-after-engine-death);
//! - `FAKE_VLLM_CRASH_MID_STREAM=1`: exit 1 after the second streamed token;
//! - `FAKE_VLLM_IGNORE_SIGTERM=1`: ignore SIGTERM (as vLLM does while starting);
//! - `FAKE_VLLM_GRANDCHILD=1`: spawn a child `sleep` that, like EngineCore, outlives a
//!   leader-only kill; its pid goes to `$FAKE_VLLM_STATE_DIR/grandchild.pid`;
//! - `FAKE_VLLM_TOKEN_MS` (2): delay per generated token;
//! - `FAKE_VLLM_CUT_STREAM=1`: end streams cleanly after two tokens, without `[DONE]`;
//! - `FAKE_VLLM_TAIL_MS`: end a stream's body this long after `data: [DONE]` (uvicorn sends
//!   the chunked encoding's last chunk as a write of its own);
//! - `FAKE_VLLM_GARBAGE=1`: the third streamed event is not JSON (`data: {garbage`);
//! - `FAKE_VLLM_NOISE=1`: write what real engines write at their worst to stdout/stderr: a
//!   `\r` progress bar, invalid UTF-8, a 1 MiB line, output without a final newline;
//! - `FAKE_VLLM_STALL=1`: after two streamed tokens send nothing more (the connection stays
//!   open), and from then on `/health` never answers: a hung EngineCore behind a live API
//!   server;
//! - `FAKE_VLLM_HEALTH_FLAP=1`: once ready, `/health` answers 503 and 200 by turns (a load
//!   balancer's or a dying GPU's flapping probe) while generation works;
//! - `FAKE_VLLM_STRICT_BIND=1`: fail like vLLM when `--uds` names an existing file;
//! - `FAKE_VLLM_METRICS_MS`: delay `/metrics` answers this long (a stuck exporter);
//! - `FAKE_VLLM_STATE_DIR`: where it writes `requests.jsonl` (each request: path, headers,
//!   body), `argv.json`, a line in `connections.log` per connection accepted, and its pid
//!   as a line of `starts.log` when it starts (how many times an engine was started).
//!
//! Also vLLM's newer routes ([`apis`]): `/v1/messages` (Anthropic), `/v1/responses` (kept with
//! `VLLM_ENABLE_RESPONSES_API_STORE=1`), `/tokenize`, `/detokenize`, log probabilities, and the
//! context-length refusal (`--max-model-len`, default 2048; chat prompts count 5 tokens a
//! message, or a message's words + 1 if more) with `truncate_prompt_tokens`.
//!
//! `--api-key KEY` (or `VLLM_API_KEY`) guards the `/v1` routes as vLLM does (401
//! `{"error": "Unauthorized"}`; `/health` stays open), and `--ssl-certfile`/`--ssl-keyfile`
//! serve TCP over TLS: a stand-in for a vLLM that runs on another machine.
//!
//! `--max-num-seqs N` bounds the generations it runs at once, like vLLM's scheduler: more
//! wait, first come first served (and, as with vLLM, a waiting request's client sees nothing
//! until it runs).
//!
//! Like vLLM 0.32, tools need the engine's flags: a request with `tools` (tool_choice unset
//! or "auto") gets vLLM's 400 unless it was started with `--enable-auto-tool-choice` and
//! `--tool-call-parser`, and reasoning is split out (`delta.reasoning`) only with
//! `--reasoning-parser` (and not when `chat_template_kwargs.enable_thinking` is false).

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

#[path = "fake_vllm/apis.rs"]
mod apis;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct Fake {
    /// `--api-key`: the `/v1` routes want `Authorization: Bearer <it>`.
    api_key: Option<String>,
    model: String,
    served_name: String,
    started: Instant,
    startup: Duration,
    hang: bool,
    exit_after: Option<u64>,
    crash_mid_stream: bool,
    token_delay: Duration,
    metrics_delay: Duration,
    completions: AtomicU64,
    sleeping: AtomicBool,
    woken: Notify,
    state_dir: Option<std::path::PathBuf>,
    /// `--enable-auto-tool-choice` and `--tool-call-parser` were given.
    auto_tools: bool,
    tool_parser: bool,
    reasoning_parser: bool,
    max_model_len: u64,
    responses: apis::Store,
    /// `FAKE_VLLM_STALL`: a stream has stalled, so `/health` hangs.
    stalled: AtomicBool,
    /// `FAKE_VLLM_HEALTH_FLAP`: `/health` calls so far, when flapping.
    health_flap: Option<AtomicU64>,
    /// `--max-num-seqs`: generations at once (a fair-to-arrival queue beyond, as vLLM's).
    seqs: Option<Arc<tokio::sync::Semaphore>>,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn log(level: &str, msg: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (h, m, s) = (now / 3600 % 24, now / 60 % 60, now % 60);
    // vLLM's format: (APIServer pid=N) LEVEL MM-DD hh:mm:ss [file.py:L] message
    let line = format!(
        "(APIServer pid={}) {level} 11-27 {h:02}:{m:02}:{s:02} [api_server.py:1] {msg}",
        std::process::id()
    );
    if level == "ERROR" || level == "WARNING" {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    let _ = std::io::stdout().flush();
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version") {
        println!("0.32.0+fake");
        return;
    }
    if args.get(1).map(String::as_str) != Some("serve") || args.len() < 3 {
        eprintln!("usage: vllm serve MODEL [--served-model-name N] [--uds PATH | --port P]");
        std::process::exit(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(serve(args));
}

async fn serve(args: Vec<String>) {
    let model = args[2].clone();
    let state_dir = std::env::var_os("FAKE_VLLM_STATE_DIR").map(std::path::PathBuf::from);
    let unix_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    };
    let startup_ms = env_u64("FAKE_VLLM_STARTUP_MS").unwrap_or(300);
    if let Some(dir) = &state_dir {
        let _ = std::fs::create_dir_all(dir);
        use std::io::Write;
        if let Ok(mut starts) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("starts.log"))
        {
            let _ = writeln!(starts, "{}", std::process::id());
        }
        // When /health starts answering 200 (for readiness-overhead measurements).
        let _ = std::fs::write(
            dir.join("ready_at_ms"),
            (unix_ms() + u128::from(startup_ms)).to_string(),
        );
        let _ = std::fs::write(dir.join("argv.json"), json!(args).to_string());
        let env: serde_json::Map<String, Value> = std::env::vars()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let _ = std::fs::write(dir.join("env.json"), Value::Object(env).to_string());
    }
    let fake = Arc::new(Fake {
        api_key: arg_value(&args, "--api-key").or_else(|| std::env::var("VLLM_API_KEY").ok()),
        model: model.clone(),
        served_name: arg_value(&args, "--served-model-name").unwrap_or_else(|| model.clone()),
        started: Instant::now(),
        startup: Duration::from_millis(startup_ms),
        hang: std::env::var_os("FAKE_VLLM_HANG").is_some(),
        exit_after: env_u64("FAKE_VLLM_EXIT_AFTER"),
        crash_mid_stream: std::env::var_os("FAKE_VLLM_CRASH_MID_STREAM").is_some(),
        token_delay: Duration::from_millis(env_u64("FAKE_VLLM_TOKEN_MS").unwrap_or(2)),
        metrics_delay: Duration::from_millis(env_u64("FAKE_VLLM_METRICS_MS").unwrap_or(0)),
        completions: AtomicU64::new(0),
        sleeping: AtomicBool::new(false),
        woken: Notify::new(),
        state_dir,
        auto_tools: args.iter().any(|a| a == "--enable-auto-tool-choice"),
        tool_parser: arg_value(&args, "--tool-call-parser").is_some(),
        reasoning_parser: arg_value(&args, "--reasoning-parser").is_some(),
        max_model_len: arg_value(&args, "--max-model-len")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048),
        stalled: AtomicBool::new(false),
        health_flap: std::env::var_os("FAKE_VLLM_HEALTH_FLAP").map(|_| AtomicU64::new(0)),
        seqs: arg_value(&args, "--max-num-seqs")
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
        responses: apis::Store {
            enabled: std::env::var("VLLM_ENABLE_RESPONSES_API_STORE").as_deref() == Ok("1"),
            ..apis::Store::default()
        },
    });
    log(
        "INFO",
        &format!("vLLM API server version 0.32.0+fake, model {model}"),
    );

    if std::env::var_os("FAKE_VLLM_GRANDCHILD").is_some() {
        match std::process::Command::new("sleep").arg("600").spawn() {
            Ok(child) => {
                if let Some(dir) = &fake.state_dir {
                    let _ = std::fs::write(dir.join("grandchild.pid"), child.id().to_string());
                }
                log("INFO", &format!("EngineCore started (pid={})", child.id()));
            }
            Err(e) => log("ERROR", &format!("cannot spawn engine core: {e}")),
        }
    }

    let ignore_term = std::env::var_os("FAKE_VLLM_IGNORE_SIGTERM").is_some();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        while term.recv().await.is_some() {
            if ignore_term {
                log("INFO", "SIGTERM received during engine start-up; ignoring");
                continue;
            }
            log("INFO", "Shutting down FastAPI HTTP server.");
            tokio::time::sleep(Duration::from_millis(30)).await;
            std::process::exit(0);
        }
    });

    if std::env::var_os("FAKE_VLLM_NOISE").is_some() {
        let mut out = std::io::stdout();
        let _ = out.write_all(
            "\u{2588}\u{258c} warming up\r\u{2588}\u{2588}\u{258c} warming up\r".as_bytes(),
        );
        let _ = out.write_all(b"\xff\xfe not UTF-8 \xc3\n");
        let _ = out.write_all(&vec![b'x'; 1 << 20]);
        let _ =
            out.write_all(b"\n(APIServer pid=1) INFO 11-27 00:00:00 [x.py:1] after the long line");
        let _ = out.flush();
        let _ = std::io::stderr().write_all(b"\x1b[31mWARNING\x1b[0m colour codes and \x00 nul\n");
    }

    if let Ok(message) = std::env::var("FAKE_VLLM_FAIL_STARTUP") {
        tokio::time::sleep(Duration::from_millis(100)).await;
        log("ERROR", "EngineCore failed to start.");
        log("ERROR", &message);
        std::process::exit(1);
    }

    if let Some(path) = arg_value(&args, "--uds") {
        // Real vLLM binds without unlinking first: a leftover socket file makes it fail with
        // EADDRINUSE. FAKE_VLLM_STRICT_BIND reproduces that.
        if std::env::var_os("FAKE_VLLM_STRICT_BIND").is_none() {
            let _ = std::fs::remove_file(&path);
        }
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                log("ERROR", &format!("cannot bind {path}: {e}"));
                std::process::exit(1);
            }
        };
        log("INFO", &format!("Starting vLLM API server on {path}"));
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                spawn_conn(TokioIo::new(stream), fake.clone());
            }
        }
    } else {
        let host = arg_value(&args, "--host").unwrap_or_else(|| "127.0.0.1".into());
        let port = arg_value(&args, "--port").unwrap_or_else(|| "8000".into());
        // Like the real engine over TCP: refused until the model is loaded.
        tokio::time::sleep(fake.startup).await;
        let listener = match tokio::net::TcpListener::bind(format!("{host}:{port}")).await {
            Ok(l) => l,
            Err(e) => {
                log("ERROR", &format!("cannot bind {host}:{port}: {e}"));
                std::process::exit(1);
            }
        };
        let tls = match (
            arg_value(&args, "--ssl-certfile"),
            arg_value(&args, "--ssl-keyfile"),
        ) {
            (Some(cert), Some(key)) => match tls_acceptor(&cert, &key) {
                Ok(acceptor) => Some(acceptor),
                Err(e) => {
                    log("ERROR", &format!("cannot load the TLS certificate: {e}"));
                    std::process::exit(1);
                }
            },
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        log(
            "INFO",
            &format!("Starting vLLM API server on {scheme}://{host}:{port}"),
        );
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                // As uvicorn does: tokens are small writes, Nagle would hold them back.
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => spawn_conn(TokioIo::new(stream), fake.clone()),
                    Some(acceptor) => {
                        let (acceptor, fake) = (acceptor.clone(), fake.clone());
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                spawn_conn(TokioIo::new(stream), fake);
                            }
                        });
                    }
                }
            }
        }
    }
}

/// uvicorn's `--ssl-certfile`/`--ssl-keyfile`: PEM files, HTTP/1.1.
fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn spawn_conn<I>(io: I, fake: Arc<Fake>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if let Some(dir) = &fake.state_dir {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("connections.log"));
        if let Ok(mut f) = log {
            let _ = f.write_all(b"accepted\n");
        }
    }
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(handle(req, fake).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    });
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn json_resp(status: StatusCode, value: Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response<Body> {
    let param = if kind == "NotFoundError" {
        json!("model")
    } else {
        Value::Null
    };
    json_resp(
        status,
        json!({"error": {"message": message, "type": kind, "param": param, "code": status.as_u16()}}),
    )
}

/// vLLM's answer for a model it does not serve.
fn unknown_model(model: &str, fake: &Fake) -> Response<Body> {
    openai_error(
        StatusCode::NOT_FOUND,
        &format!(
            "The model `{model}` does not exist. Valid aliases: {}.",
            fake.served_name
        ),
        "NotFoundError",
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

async fn handle(req: Request<Incoming>, fake: Arc<Fake>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(dir) = &fake.state_dir {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("requests.jsonl"))
        {
            let t_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            let _ = writeln!(
                f,
                "{}",
                json!({"t_ms": t_ms, "path": path, "query": query, "headers": headers, "body": parsed})
            );
        }
    }
    let ready = !fake.hang && fake.started.elapsed() >= fake.startup;
    if let Some(key) = &fake.api_key {
        let given = headers.get("authorization").and_then(Value::as_str);
        if path.starts_with("/v1") && given != Some(format!("Bearer {key}").as_str()) {
            return json_resp(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
        }
    }
    match path.as_str() {
        "/health" if fake.stalled.load(Ordering::SeqCst) => {
            std::future::pending::<()>().await;
            full(StatusCode::OK, "application/json", "")
        }
        "/health"
            if ready
                && fake
                    .health_flap
                    .as_ref()
                    .is_some_and(|n| n.fetch_add(1, Ordering::SeqCst) % 2 == 0) =>
        {
            full(StatusCode::SERVICE_UNAVAILABLE, "application/json", "")
        }
        "/health" if ready => full(StatusCode::OK, "application/json", ""),
        "/health" => full(StatusCode::SERVICE_UNAVAILABLE, "application/json", ""),
        _ if !ready => openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine is starting",
            "ServiceUnavailable",
        ),
        "/version" => json_resp(StatusCode::OK, json!({"version": "0.32.0"})),
        "/v1/models" => json_resp(
            StatusCode::OK,
            json!({"object": "list", "data": [{"id": fake.served_name, "object": "model",
                "created": unix_now(), "owned_by": "vllm", "root": fake.model, "parent": null,
                "max_model_len": fake.max_model_len, "permission": [{"id": "modelperm-fake", "object": "model_permission",
                    "created": unix_now(), "allow_create_engine": false, "allow_sampling": true,
                    "allow_logprobs": true, "allow_search_indices": false, "allow_view": true,
                    "allow_fine_tuning": false, "organization": "*", "group": null, "is_blocking": false}]}]}),
        ),
        "/is_sleeping" => json_resp(
            StatusCode::OK,
            json!({"is_sleeping": fake.sleeping.load(Ordering::SeqCst)}),
        ),
        "/sleep" => {
            fake.sleeping.store(true, Ordering::SeqCst);
            log("INFO", &format!("sleep mode entered ({query})"));
            full(StatusCode::OK, "application/json", "")
        }
        "/wake_up" => {
            fake.sleeping.store(false, Ordering::SeqCst);
            fake.woken.notify_waiters();
            log("INFO", "woke up");
            full(StatusCode::OK, "application/json", "")
        }
        "/metrics" => {
            tokio::time::sleep(fake.metrics_delay).await;
            full(StatusCode::OK, "text/plain; version=0.0.4", metrics(&fake))
        }
        "/v1/chat/completions" | "/v1/completions" => complete(&path, parsed, fake).await,
        "/v1/messages" | "/v1/messages/count_tokens" => messages(&path, parsed, fake).await,
        "/v1/responses" => responses(parsed, fake).await,
        p if p.starts_with("/v1/responses/") => {
            let rest = &p["/v1/responses/".len()..];
            let (id, cancel) = match rest.strip_suffix("/cancel") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            match fake.responses.get(id) {
                None => json_resp(StatusCode::NOT_FOUND, apis::response_not_found(id)),
                Some(_) if cancel => openai_error(
                    StatusCode::BAD_REQUEST,
                    "Cannot cancel a synchronous response.",
                    "invalid_request_error",
                ),
                Some(r) => json_resp(StatusCode::OK, r),
            }
        }
        "/tokenize" | "/detokenize" => tokenize(&path, &parsed, &fake),
        "/v1/embeddings" => {
            let inputs = match &parsed["input"] {
                Value::Array(items) => items.len(),
                _ => 1,
            };
            let data: Vec<Value> = (0..inputs)
                .map(|i| json!({"index": i, "object": "embedding", "embedding": [0.1, -0.2, 0.3, 0.4]}))
                .collect();
            json_resp(
                StatusCode::OK,
                json!({"id": "embd-fake", "object": "list", "created": unix_now(),
                "model": fake.served_name, "data": data,
                "usage": {"prompt_tokens": 3 * inputs, "total_tokens": 3 * inputs, "completion_tokens": 0, "prompt_tokens_details": null}}),
            )
        }
        _ => json_resp(StatusCode::NOT_FOUND, json!({"detail": "Not Found"})),
    }
}

fn metrics(fake: &Fake) -> String {
    let labels = format!("engine=\"0\",model_name=\"{}\"", fake.served_name);
    format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{labels}}} 0.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{labels}}} 0.0\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{labels}}} 0.0\n\
         # HELP vllm:generation_tokens_total Number of generation tokens processed.\n\
         # TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{{labels}}} {}.0\n",
        fake.completions.load(Ordering::SeqCst) * 8
    )
}

/// What the fake "thinks" when started with a reasoning parser.
const REASONING: [&str; 2] = ["Let me think", " about it."];
const FINGERPRINT: &str = "vllm-0.32.0-fake";

const WORDS: [&str; 8] = [
    " the", " llama", " serves", " tokens", " fast", " and", " well", ".",
];

async fn complete(path: &str, req: Value, fake: Arc<Fake>) -> Response<Body> {
    let chat = path == "/v1/chat/completions";
    let model = req["model"].as_str().unwrap_or("").to_string();
    if model != fake.served_name {
        return unknown_model(&model, &fake);
    }
    while fake.sleeping.load(Ordering::SeqCst) {
        // Held until woken, as the real engine does.
        let woken = fake.woken.notified();
        if !fake.sleeping.load(Ordering::SeqCst) {
            break;
        }
        woken.await;
    }
    let max = req["max_tokens"]
        .as_u64()
        .or_else(|| req["max_completion_tokens"].as_u64())
        .unwrap_or(16)
        .min(4096);
    let prompt_tokens = match context(&req, chat, &fake) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    // Chat: `logprobs: true` and `top_logprobs: N`; completions: `logprobs: N`.
    let logprobs = match (chat, &req["logprobs"]) {
        (true, Value::Bool(true)) => Some(req["top_logprobs"].as_u64().unwrap_or(0) as usize),
        (false, Value::Number(n)) => n.as_u64().map(|n| n as usize),
        _ => None,
    };
    // vLLM's own check (renderers/online_renderer.py), word for word.
    let has_tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let choice = req["tool_choice"]
        .as_str()
        .unwrap_or(if has_tools { "auto" } else { "none" });
    let named = req["tool_choice"].is_object();
    if chat && has_tools && !fake.tool_parser && (choice != "none" || named) {
        if choice == "auto" && !named && !fake.auto_tools {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                "BadRequestError",
            );
        }
        if choice != "auto" || named {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("tool_choice=\"{choice}\" requires --tool-call-parser to be set"),
                "BadRequestError",
            );
        }
    }
    let reasoning = chat
        && fake.reasoning_parser
        && req["chat_template_kwargs"]["enable_thinking"].as_bool() != Some(false);
    // A tool call when tools are offered: the first tool, its first property = "Paris".
    let tool_call = req["tools"][0]["function"]["name"].as_str().map(|name| {
        let prop = req["tools"][0]["function"]["parameters"]["properties"]
            .as_object()
            .and_then(|p| p.keys().next().cloned())
            .unwrap_or_else(|| "arg".into());
        (name.to_string(), json!({ prop: "Paris" }).to_string())
    });
    // Structured output: a JSON object instead of words.
    let json_out = req.get("response_format").is_some_and(|f| !f.is_null());
    let token_ids = req["return_token_ids"].as_bool().unwrap_or(false);
    let n = fake.completions.fetch_add(1, Ordering::SeqCst) + 1;
    let id = format!("{}-fake{n}", if chat { "chatcmpl" } else { "cmpl" });
    let created = unix_now();
    let name = fake.served_name.clone();
    let done_then_maybe_exit = {
        let fake = fake.clone();
        move || {
            if fake
                .exit_after
                .is_some_and(|limit| fake.completions.load(Ordering::SeqCst) >= limit)
            {
                log(
                    "ERROR",
                    "Engine core proc EngineCore_DP0 died unexpectedly, shutting down API server.",
                );
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    std::process::exit(0);
                });
            }
        }
    };

    let words: Vec<String> = if json_out {
        vec!["{\"answer\": 42}".to_string()]
    } else if tool_call.is_some() {
        Vec::new()
    } else {
        (0..max)
            .map(|i| WORDS[i as usize % WORDS.len()].to_string())
            .collect()
    };
    let max = words.len() as u64;
    let finish_reason = if tool_call.is_some() {
        "tool_calls"
    } else if json_out {
        "stop"
    } else {
        "length"
    };

    // A place in the running batch (tokio's semaphore queues waiters in arrival order).
    let seq = match &fake.seqs {
        Some(seqs) => seqs.clone().acquire_owned().await.ok(),
        None => None,
    };
    if !req["stream"].as_bool().unwrap_or(false) {
        tokio::time::sleep(fake.token_delay * max as u32).await;
        drop(seq);
        let text: String = words.concat();
        let usage = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + max,
            "completion_tokens": max, "prompt_tokens_details": null, "completion_tokens_details": null});
        let body = if chat {
            let mut body = json!({"id": id, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null,
                    "annotations": null, "audio": null, "function_call": null, "reasoning": null},
                    "logprobs": logprobs.map(|top| json!({"content": words.iter().map(|w| apis::chat_logprob(w, top)).collect::<Vec<_>>()})), "finish_reason": finish_reason, "stop_reason": null,
                    "token_ids": null, "routed_experts": null}],
                "service_tier": null, "system_fingerprint": FINGERPRINT, "usage": usage,
                "prompt_logprobs": null, "prompt_token_ids": null, "prompt_text": null,
                "kv_transfer_params": null, "ec_transfer_params": null, "metrics": null});
            if let Some((fname, args)) = &tool_call {
                body["choices"][0]["message"]["content"] = Value::Null;
                body["choices"][0]["message"]["tool_calls"] = json!([{"id": "chatcmpl-tool-1", "type": "function",
                    "function": {"name": fname, "arguments": args}}]);
            }
            if reasoning {
                body["choices"][0]["message"]["reasoning"] = json!(REASONING.concat());
            }
            body
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs.map(|top| apis::completion_logprobs(&words, top)), "finish_reason": "length",
                    "stop_reason": null, "token_ids": null, "prompt_logprobs": null,
                    "prompt_token_ids": null, "routed_experts": null}],
                "service_tier": null, "system_fingerprint": FINGERPRINT, "usage": usage,
                "kv_transfer_params": null, "ec_transfer_params": null, "metrics": null})
        };
        done_then_maybe_exit();
        return json_resp(StatusCode::OK, body);
    }

    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let delay = fake.token_delay;
    let crash = fake.crash_mid_stream;
    let cut = std::env::var_os("FAKE_VLLM_CUT_STREAM").is_some();
    let stall = std::env::var_os("FAKE_VLLM_STALL").is_some();
    let garbage = std::env::var_os("FAKE_VLLM_GARBAGE").is_some();
    let stalled_fake = fake.clone();
    let tool = tool_call.clone();
    tokio::spawn(async move {
        let _seq = seq;
        let send = |v: Value| Ok(Frame::data(Bytes::from(format!("data: {v}\n\n"))));
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        if chat {
            let prompt_ids = if token_ids {
                json!([1, 2, 3])
            } else {
                Value::Null
            };
            let first = json!({"id": id, "object": object, "created": created, "model": name,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}],
                "prompt_token_ids": prompt_ids, "prompt_text": null});
            if tx.send(send(first)).await.is_err() {
                return;
            }
        }
        if reasoning {
            for piece in REASONING {
                let chunk = json!({"id": id, "object": object, "created": created, "model": name,
                    "choices": [{"index": 0, "delta": {"reasoning": piece}, "logprobs": null, "finish_reason": null, "token_ids": null}]});
                if tx.send(send(chunk)).await.is_err() {
                    return;
                }
            }
        }
        if let Some((fname, args)) = &tool {
            // vLLM streams a call's name, then its arguments in pieces.
            let (a, b) = args.split_at(args.len() / 2);
            for (i, delta) in [
                json!({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-1", "type": "function", "function": {"name": fname, "arguments": a}}]}),
                json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            ]
            .into_iter()
            .enumerate()
            {
                let finish = if i == 1 { json!("tool_calls") } else { Value::Null };
                let chunk = json!({"id": id, "object": object, "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish, "token_ids": null}]});
                if tx.send(send(chunk)).await.is_err() {
                    return;
                }
            }
        }
        for i in 0..max {
            tokio::time::sleep(delay).await;
            if cut && i == 2 {
                return; // the chunked body ends properly, but the events stop
            }
            if garbage && i == 2 {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: {garbage\n\n"))))
                    .await;
            }
            if stall && i == 2 {
                stalled_fake.stalled.store(true, Ordering::SeqCst);
                log("INFO", "EngineCore stopped making progress");
                let _keep_open = tx;
                std::future::pending::<()>().await;
                return;
            }
            if crash && i == 2 {
                log("ERROR", "Engine core died mid-request");
                std::process::exit(1);
            }
            let last = i + 1 == max;
            let finish = if last {
                json!(finish_reason)
            } else {
                Value::Null
            };
            let word = words[i as usize].as_str();
            let ids = if token_ids {
                json!([10 + i])
            } else {
                Value::Null
            };
            let mut choice = if chat {
                let lp = logprobs.map(|top| json!({"content": [apis::chat_logprob(word, top)]}));
                json!({"index": 0, "delta": {"content": word}, "logprobs": lp, "finish_reason": finish, "token_ids": ids})
            } else {
                let lp = logprobs.map(|top| apis::completion_logprobs(&[word.to_string()], top));
                json!({"index": 0, "text": word, "logprobs": lp, "finish_reason": finish, "stop_reason": null,
                    "prompt_token_ids": null, "token_ids": null})
            };
            if last {
                choice["stop_reason"] = Value::Null;
            }
            let mut chunk = json!({"id": id, "object": object, "created": created, "model": name, "choices": [choice]});
            if last && !chat {
                chunk["system_fingerprint"] = json!(FINGERPRINT);
            }
            if tx.send(send(chunk)).await.is_err() {
                log("INFO", "client disconnected: request aborted");
                return;
            }
        }
        if include_usage {
            let usage = json!({"id": id, "object": object, "created": created, "model": name, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + max, "completion_tokens": max},
                "system_fingerprint": FINGERPRINT});
            let _ = tx.send(send(usage)).await;
        }
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
            .await;
        if let Some(ms) = env_u64("FAKE_VLLM_TAIL_MS") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        done_then_maybe_exit();
    });
    let stream = tokio_stream_from(rx);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp
}

/// The prompt's tokens (5 a chat message, or its words + 1 if more; a prompt's words + 1),
/// cut to `truncate_prompt_tokens`, or vLLM's refusal when they do not fit the context.
#[allow(clippy::result_large_err)]
fn context(req: &Value, chat: bool, fake: &Fake) -> Result<u64, Response<Body>> {
    let mut n = prompt_tokens(req, chat);
    if let Some(keep) = req["truncate_prompt_tokens"].as_u64() {
        n = n.min(keep);
    }
    if n > fake.max_model_len {
        let c = fake.max_model_len;
        return Err(json_resp(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": format!("This model's maximum context length is {c} tokens. However, your prompt contains at least {} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value={})", c + 1, c + 1),
                "type": "BadRequestError", "param": "input_tokens", "code": 400}}),
        ));
    }
    Ok(n)
}

fn prompt_tokens(req: &Value, chat: bool) -> u64 {
    let words = |v: &Value| {
        v.as_str()
            .map_or(0, |t| t.split_whitespace().count() as u64)
    };
    match chat {
        true => req["messages"].as_array().map_or(1, |m| {
            m.iter().map(|m| (words(&m["content"]) + 1).max(5)).sum()
        }),
        false => words(&req["prompt"]) + 1,
    }
}

fn words_for(max: u64) -> Vec<String> {
    (0..max)
        .map(|i| WORDS[i as usize % WORDS.len()].to_string())
        .collect()
}

/// A tool call when the request forces one (Anthropic `tool_choice` "tool" or "any", or
/// "auto" on an engine with auto tool choice): the tool's first property = "Paris".
fn anthropic_tool(req: &Value, fake: &Fake) -> Option<(String, Value)> {
    let tool = req["tools"].get(0)?;
    let forced = match req["tool_choice"]["type"].as_str() {
        Some("tool" | "any") => true,
        Some("auto") | None => fake.auto_tools,
        _ => false,
    };
    if !forced {
        return None;
    }
    let name = req["tool_choice"]["name"]
        .as_str()
        .or(tool["name"].as_str())?
        .to_string();
    let prop = tool["input_schema"]["properties"]
        .as_object()
        .and_then(|p| p.keys().next().cloned())
        .unwrap_or_else(|| "arg".into());
    Some((name, json!({ prop: "Paris" })))
}

async fn messages(path: &str, req: Value, fake: Arc<Fake>) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("");
    if !req["messages"].is_array() {
        return json_resp(
            StatusCode::BAD_REQUEST,
            apis::validation_error("body.messages", "Field required"),
        );
    }
    if model != fake.served_name {
        return json_resp(
            StatusCode::NOT_FOUND,
            apis::anthropic_unknown_model(model, &fake.served_name),
        );
    }
    let input = match context(&req, true, &fake) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    if path.ends_with("/count_tokens") {
        return json_resp(
            StatusCode::OK,
            json!({"input_tokens": input, "context_management": {"original_input_tokens": input}}),
        );
    }
    let Some(max) = req["max_tokens"].as_u64() else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            apis::validation_error("body.max_tokens", "Field required"),
        );
    };
    let n = fake.completions.fetch_add(1, Ordering::SeqCst) + 1;
    let id = format!("chatcmpl-fake{n}");
    let tool = anthropic_tool(&req, &fake);
    let words = if tool.is_some() {
        Vec::new()
    } else {
        words_for(max.min(4096))
    };
    let (stop, output) = match &tool {
        Some(_) => ("tool_use", 12),
        None => ("max_tokens", words.len() as u64),
    };
    let tool_ref = tool.as_ref().map(|(n, v)| (n.as_str(), v.clone()));
    if !req["stream"].as_bool().unwrap_or(false) {
        tokio::time::sleep(fake.token_delay * output as u32).await;
        let text = words.concat();
        return json_resp(
            StatusCode::OK,
            apis::message(
                &id,
                &fake.served_name,
                &text,
                tool_ref,
                stop,
                (input, output),
            ),
        );
    }
    let events = apis::message_events(
        &id,
        &fake.served_name,
        &words,
        tool_ref,
        stop,
        (input, output),
    );
    stream_events(events, fake.token_delay)
}

async fn responses(req: Value, fake: Arc<Fake>) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("");
    if model != fake.served_name {
        return unknown_model(model, &fake);
    }
    let input = match &req["input"] {
        Value::String(s) => s.split_whitespace().count() as u64 + 15,
        Value::Array(items) => items.len() as u64 * 5 + 10,
        _ => {
            return json_resp(
                StatusCode::BAD_REQUEST,
                apis::validation_error("body.input", "Input should be a valid string"),
            )
        }
    };
    let max = req["max_output_tokens"].as_u64().unwrap_or(16).min(4096);
    let n = fake.completions.fetch_add(1, Ordering::SeqCst) + 1;
    let id = format!("resp_fake{n}");
    let item = format!("msg_fake{n}");
    let words = words_for(max);
    let text = words.concat();
    let created = unix_now();
    let end = apis::response(
        &id,
        &fake.served_name,
        &req,
        "incomplete",
        vec![apis::output_message(&item, &text, "completed")],
        Some((input, words.len() as u64)),
        created,
    );
    fake.responses.keep(&end);
    if !req["stream"].as_bool().unwrap_or(false) {
        tokio::time::sleep(fake.token_delay * max as u32).await;
        return json_resp(StatusCode::OK, end);
    }
    let start = apis::response(
        &id,
        &fake.served_name,
        &req,
        "in_progress",
        Vec::new(),
        None,
        created,
    );
    let events = apis::response_events(&start, &end, &item, &words);
    stream_events(events, fake.token_delay)
}

fn tokenize(path: &str, req: &Value, fake: &Fake) -> Response<Body> {
    let model = req["model"].as_str().unwrap_or("");
    if model != fake.served_name {
        return unknown_model(model, fake);
    }
    if path == "/detokenize" {
        let n = req["tokens"].as_array().map_or(0, Vec::len);
        let prompt: Vec<&str> = (0..n).map(|i| WORDS[i % WORDS.len()].trim()).collect();
        return json_resp(StatusCode::OK, json!({"prompt": prompt.join(" ")}));
    }
    let tokens = match req.get("messages") {
        Some(Value::Array(_)) => (0..prompt_tokens(req, true)).map(|i| i + 3).collect(),
        _ => apis::tokens_of(req["prompt"].as_str().unwrap_or("")),
    };
    json_resp(
        StatusCode::OK,
        json!({"count": tokens.len(), "max_model_len": fake.max_model_len, "tokens": tokens, "token_strs": null}),
    )
}

/// Named SSE events (`event: NAME` then `data: …`), a token's delay apart.
fn stream_events(events: Vec<(String, Value)>, delay: Duration) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let crash = std::env::var_os("FAKE_VLLM_CRASH_MID_STREAM").is_some();
    tokio::spawn(async move {
        for (i, (name, data)) in events.into_iter().enumerate() {
            tokio::time::sleep(delay).await;
            if crash && i == 3 {
                log("ERROR", "Engine core died mid-request");
                std::process::exit(1);
            }
            let frame = Frame::data(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
            if tx.send(Ok(frame)).await.is_err() {
                log("INFO", "client disconnected: request aborted");
                return;
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp
}

/// An mpsc receiver as a `Stream` of frames.
fn tokio_stream_from(rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>) -> ReceiverStream {
    ReceiverStream(rx)
}

struct ReceiverStream(mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
