//! The engine path under operator commands and races (issue 15's defects): an unload waits
//! for the requests in flight (refusing new ones with a clear error) unless forced, a forced
//! one ends its streams with an error rather than a hang, and a request that asks for a
//! larger context never stops an engine another request holds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vllama_testkit::{spawn_request, wait_until, workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

/// vllamad run by a shell that first sets its open-file limit (`ulimit ARGS`).
fn with_ulimit(dir: &std::path::Path, args: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join("vllamad-with-ulimit");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit {args}\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper.to_str().unwrap().to_string()
}

fn slow() -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake(),
            "slow",
            &[
                "env = { FAKE_VLLM_TOKEN_MS = \"40\" }",
                "max_model_len = 2048",
            ],
        ),
    )
}

fn stream_body(tokens: u32) -> String {
    json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": tokens}}).to_string()
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the fake engine of `model` has received a generation request.
fn engine_busy(d: &Daemon, model: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(d.fake_state(model).join("requests.jsonl"))
            .is_ok_and(|r| r.contains("/v1/chat/completions"))
    })
}

#[test]
fn unload_waits_for_the_requests_in_flight() {
    let d = slow();
    let stream = spawn_request(d.api, "/api/chat", stream_body(40));
    assert!(engine_busy(&d, "slow"), "{}", d.log());
    let admin = d.admin.clone();
    let started = Instant::now();
    let unload = std::thread::spawn(move || {
        vllama_testkit::admin_request(&admin, "POST", "/v1/unload", r#"{"model":"slow"}"#)
    });
    // Meanwhile a new request is refused with a clear error, not queued behind the drain.
    assert!(wait_until(Duration::from_secs(5), || d
        .log()
        .contains("unloading: refusing new requests")));
    let refused = d.request("POST", "/api/chat", &stream_body(2));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("being unloaded"));

    // The stream in flight gets its whole answer.
    let lines = ndjson(&stream.join().unwrap().body);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{lines:?}");
    assert_eq!(last["eval_count"], 40, "{last}");
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");
    let unloaded = unload.join().unwrap();
    assert_eq!(unloaded.status, 200, "{}", unloaded.body);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the stream"
    );
    assert!(d.engine("slow:latest").is_none(), "{:?}", d.engines());
    // And the model serves again: the next request starts it.
    let again = d.request("POST", "/api/chat", &stream_body(2));
    assert_eq!(again.status, 200, "{}", again.body);
}

#[test]
fn a_forced_unload_ends_streams_with_an_error() {
    let d = slow();
    let stream = spawn_request(d.api, "/api/chat", stream_body(200));
    assert!(engine_busy(&d, "slow"));
    let started = Instant::now();
    let r = d.admin("POST", "/v1/unload", r#"{"model":"slow","force":true}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = ndjson(&stream.join().unwrap().body);
    let last = lines.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped in the middle")),
        "{lines:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
}

#[test]
fn a_larger_context_never_stops_an_engine_in_use() {
    let d = slow();
    // Start the engine with the default context, then keep streams running while requests
    // asking for a larger context arrive: each must be served by the running engine.
    let warm = d.request("POST", "/api/chat", &stream_body(1));
    assert_eq!(warm.status, 200);
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(spawn_request(d.api, "/api/chat", stream_body(20)));
    }
    let mut bigger = Vec::new();
    for _ in 0..8 {
        let body = json!({"model": "slow", "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 1, "num_ctx": 4096}})
        .to_string();
        bigger.push(spawn_request(d.api, "/api/chat", body));
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in streams {
        let lines = ndjson(&s.join().unwrap().body);
        assert!(
            lines.iter().all(|l| l.get("error").is_none()),
            "a stream was cut: {lines:?}\n{}",
            d.log()
        );
        assert_eq!(lines.last().unwrap()["eval_count"], 20);
    }
    for b in bigger {
        assert_eq!(b.join().unwrap().status, 200);
    }
}

#[test]
fn without_a_gpu_engines_share_host_memory() {
    // A chat and an embedding model, each with a known KV cache: both stay loaded (the
    // default max_loaded = 0 used to mean one engine on a machine without a GPU).
    let kv = "args = [\"--kv-cache-memory-bytes\", \"64M\"]";
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(&fake(), "chat", &[kv])
            .fake_model(&fake(), "embed", &[kv])
            .fake_model(&fake(), "greedy", &[]),
    );
    let ask = |model: &str| {
        let body =
            json!({"model": model, "prompt": "x", "stream": false, "options": {"num_predict": 1}});
        d.request("POST", "/api/generate", &body.to_string())
    };
    for model in ["chat", "embed", "chat", "embed"] {
        assert_eq!(ask(model).status, 200);
    }
    let started = |m: &str| {
        d.log()
            .lines()
            .filter(|l| l.contains("starting engine") && l.contains(&format!("model={m}:latest")))
            .count()
    };
    assert_eq!(
        (started("chat"), started("embed")),
        (1, 1),
        "no reload on a switch"
    );
    assert!(d.engine("chat:latest").is_some() && d.engine("embed:latest").is_some());
    // One whose KV cache vLLM sizes from the machine's memory needs it all: the idle ones
    // make room.
    assert_eq!(ask("greedy").status, 200);
    assert!(
        d.engine("chat:latest").is_none() && d.engine("embed:latest").is_none(),
        "{:?}",
        d.engines()
    );
}

#[test]
fn a_stalled_stream_fails_and_a_hung_engine_is_restarted() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "stall_timeout = \"1s\"")
            .fake_model(&fake(), "hung", &["env = { FAKE_VLLM_STALL = \"1\" }"]),
    );
    let started = Instant::now();
    let body = json!({"model": "hung", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 10}});
    let r = d.request("POST", "/api/chat", &body.to_string());
    let lines = ndjson(&r.body);
    let last = lines.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("engine.stall_timeout")),
        "{lines:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // /health did not answer either: the engine is killed and started again.
    assert!(
        wait_until(Duration::from_secs(20), || d
            .engine("hung:latest")
            .is_some_and(|e| e["crashes"].as_u64() >= Some(1))),
        "{:?}\n{}",
        d.engine("hung:latest"),
        d.log()
    );
    assert!(d.log().contains("stopped answering"), "{}", d.log());
    // The OpenAI pass-through fails its stream the same way, in its own shape.
    let r = d.request(
        "POST",
        "/v1/chat/completions",
        &vllama_testkit::chat_body("hung", 10, true),
    );
    let last = r
        .body
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        last.starts_with("data: {\"error\"") && last.contains("engine.stall_timeout"),
        "{}",
        r.body
    );
}

#[test]
fn a_thousand_idle_connections_do_not_lock_clients_out() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use std::io::Write;
    // This test opens the connections: it needs the fds itself.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    if hard < 4096 {
        eprintln!("skipped: the hard open-file limit ({hard}) is too low to try");
        return;
    }
    // vllamad started by hand with the usual soft limit (1 024).
    let dir = tempfile::tempdir().unwrap();
    let wrapper = with_ulimit(dir.path(), "-Sn 1024");
    let d = Daemon::start(&wrapper, DaemonOptions::default());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft raised to hard: {line}");

    // 1 200 clients that never finish their headers.
    let idle: Vec<std::net::TcpStream> = (0..1200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(d.api).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = d.get("/api/version");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!d.log().contains("Too many open files"), "{}", d.log());
    drop(idle);
}

#[test]
fn oversized_headers_get_431() {
    use std::io::{Read, Write};
    let d = Daemon::start(BIN, DaemonOptions::default());
    let mut s = std::net::TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // More header fields than hyper keeps (100): refused whole, before any route runs.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many}\r\n");
    let _ = s.write_all(big.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out:.200}");
    // The daemon goes on serving.
    assert_eq!(d.get("/").status, 200);
}

#[test]
fn an_ollama_answer_cut_before_done_is_an_error_not_an_answer() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake(),
            "cut",
            &["env = { FAKE_VLLM_CUT_STREAM = \"1\" }"],
        ),
    );
    for stream in [true, false] {
        let body = json!({"model": "cut", "messages": [{"role": "user", "content": "x"}],
            "stream": stream, "options": {"num_predict": 10}});
        let r = d.request("POST", "/api/chat", &body.to_string());
        let error = if stream {
            ndjson(&r.body)
                .last()
                .and_then(|l| l["error"].as_str().map(str::to_string))
        } else {
            assert_eq!(r.status, 500, "{}", r.body);
            r.json()["error"].as_str().map(str::to_string)
        };
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("without [DONE]")),
            "stream {stream}: {}",
            r.body
        );
    }
}

/// A connection to the daemon from `127.0.0.<last>`: every 127/8 address is loopback, so one
/// machine can play many clients.
fn connect_from(last: u8, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
            .unwrap();
        socket.connect(to).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Opens connections that send half a request's headers and then nothing.
fn headerless(
    from: std::ops::RangeInclusive<u8>,
    each: usize,
    to: std::net::SocketAddr,
) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    let mut out = Vec::new();
    for last in from {
        for _ in 0..each {
            let mut s = connect_from(last, to);
            s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
            out.push(s);
        }
    }
    out
}

fn metric_opt(d: &Daemon, line_start: &str) -> Option<f64> {
    let text = d.get("/metrics").body;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn metric(d: &Daemon, line_start: &str) -> f64 {
    metric_opt(d, line_start).unwrap_or_else(|| panic!("no {line_start} in /metrics"))
}

#[test]
fn out_of_descriptors_the_oldest_idle_connections_make_room() {
    // vllamad run with a hard limit of 256 open files.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = with_ulimit(dir.path(), "-n 256");
    let d = Daemon::start(
        &wrapper,
        DaemonOptions::default().fake_model(
            &fake(),
            "slow",
            &["env = { FAKE_VLLM_TOKEN_MS = \"40\" }"],
        ),
    );
    // A stream in flight before the flood, which must not be the one shed.
    let stream = spawn_request(d.api, "/api/chat", stream_body(60));
    let serving = wait_until(Duration::from_secs(30), || {
        metric_opt(&d, "vllama_requests_in_flight{model=\"slow:latest\"}").is_some_and(|n| n >= 1.0)
    });
    assert!(serving, "the stream never reached the engine");
    // 300 clients on ten addresses (30 each, under the per-address bound) that never finish
    // their headers: more than the fd table holds.
    let idle = headerless(2..=11, 30, d.api);
    // Older than a request on its way.
    std::thread::sleep(Duration::from_millis(1200));
    let t = Instant::now();
    let r = d.get("/api/version");
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "new client waited {:?}",
        t.elapsed()
    );
    assert!(metric(&d, "vllama_connections_shed_total{reason=\"fd_limit\"}") >= 1.0);
    assert!(metric(&d, "process_open_fds") <= 256.0);
    let r = stream.join().unwrap();
    let lines = ndjson(&r.body);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "the busy stream was cut: {}", r.body);
    assert!(d.log().contains("out of file descriptors"), "{}", d.log());
    drop(idle);
}

#[test]
fn an_address_over_its_share_of_headerless_connections_loses_its_oldest() {
    use std::io::{Read, Write};
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().set("api", "max_headerless_per_client = 8"),
    );
    let mut held = headerless(3..=3, 8, d.api);
    // Older than a request on its way.
    std::thread::sleep(Duration::from_millis(1200));
    // A ninth from that address is served, and its oldest held connection closed.
    let mut ninth = connect_from(3, d.api);
    ninth
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    ninth.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    held[0]
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(held[0].read(&mut buf), Ok(0) | Err(_)),
        "the oldest was not closed"
    );
    // The others from that address are left, and answered when they send their request.
    held[1].write_all(b"Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    held[1].read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Other addresses are not touched.
    let mut other = connect_from(4, d.api);
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    other.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        metric(&d, "vllama_connections_shed_total{reason=\"per_client\"}"),
        1.0
    );
    assert_eq!(metric(&d, "vllama_connections{state=\"headerless\"}"), 6.0);
    drop(held);
}

/// A client that sends its headers and then trickles (or stops sending) its body.
fn partial_post(to: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(to).unwrap();
    s.write_all(
        b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .unwrap();
    s
}

#[test]
fn a_body_that_stops_arriving_gets_408() {
    use std::io::Read;
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().set("api", "header_read_timeout = \"1s\""),
    );
    let mut s = partial_post(d.api);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("api.header_read_timeout"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn out_of_descriptors_with_every_connection_busy_new_clients_get_503() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = with_ulimit(dir.path(), "-n 64");
    let d = Daemon::start(&wrapper, DaemonOptions::default());
    // More clients than the fd table holds, each in the middle of sending its body: busy,
    // so none may be shed.
    let busy: Vec<_> = (0..70).map(|_| partial_post(d.api)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    let body = out.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("file descriptors"),
        "{v}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // None of the accepted (busy) connections was cut: each still waits for the rest of
    // its body; those past the fd table were answered 503.
    for (i, mut c) in busy.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => {}
            other => panic!("client {i} was cut: {other:?}"),
        }
    }
    drop(busy);
    // The busy connections close on their threads as their clients leave; while they do,
    // a new client may still be refused (or a connection whose client has left shed). Then
    // every one is served again.
    let served = wait_until(Duration::from_secs(5), || {
        d.get("/").status == 200 && d.get("/metrics").status == 200
    });
    assert!(served);
    assert!(metric(&d, "vllama_connections_shed_total{reason=\"refused\"}") >= 1.0);
}

#[test]
fn a_flapping_health_probe_neither_fails_a_start_nor_restarts_a_serving_engine() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "stall_timeout = \"1s\"")
            .fake_model(
                &fake(),
                "flappy",
                &["env = { FAKE_VLLM_HEALTH_FLAP = \"1\", FAKE_VLLM_STARTUP_MS = \"50\" }"],
            ),
    );
    for i in 0..20 {
        let body = json!({"model": "flappy", "messages": [{"role": "user", "content": "x"}], "stream": i % 2 == 0, "options": {"num_predict": 4}});
        let r = d.request("POST", "/api/chat", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(ndjson(&r.body).last().unwrap()["done"], true, "{}", r.body);
    }
    let engines = d.engines();
    let e = &engines[0];
    assert_eq!(e["state"], "ready", "{e}");
    assert_eq!(
        (e["restarts"].as_u64(), e["crashes"].as_u64()),
        (Some(0), Some(0)),
        "{e}"
    );
}

#[test]
fn requests_that_leave_a_model_idle_leave_no_task_behind() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake(),
            "m",
            &["env = { FAKE_VLLM_STARTUP_MS = \"50\" }"],
        ),
    );
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": false, "options": {"num_predict": 1}}).to_string();
    assert_eq!(d.request("POST", "/api/chat", &body).status, 200);
    let before = metric(&d, "vllama_runtime_tasks");
    // One at a time: each leaves the model idle, with its keep_alive (5 minutes) to run.
    for _ in 0..200 {
        assert_eq!(d.request("POST", "/api/chat", &body).status, 200);
    }
    let after = metric(&d, "vllama_runtime_tasks");
    assert!(after <= before + 5.0, "tasks alive: {before} → {after}");
}

#[test]
fn a_larger_context_races_short_requests_without_cutting_one() {
    // Short requests one after another on several threads make the engine idle and busy
    // by turns while requests for ever larger contexts restart it when they find it idle:
    // no short request may fail. (The exact interleaving of the old race, a lease taken
    // between the look at `pending` and the stop, is tested deterministically in
    // `scheduler::tests`; timing alone hits it too rarely.)
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake(),
            "slow",
            &[
                "env = { FAKE_VLLM_TOKEN_MS = \"1\", FAKE_VLLM_STARTUP_MS = \"20\" }",
                "max_model_len = 2048",
            ],
        ),
    );
    let short = json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": false, "options": {"num_predict": 1}}).to_string();
    assert_eq!(d.request("POST", "/api/chat", &short).status, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (api, short, stop) = (d.api, short.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = spawn_request(api, "/api/chat", short.clone())
                        .join()
                        .unwrap();
                    if r.status != 200 {
                        failures.push(r.body);
                    }
                    // A moment between requests: the model is idle now and then (a
                    // restart needs that), busy most of the time (the race).
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                failures
            })
        })
        .collect();
    for i in 0..40u32 {
        let body = json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": false,
            "options": {"num_predict": 1, "num_ctx": 2048 + 64 * (i + 1)}})
        .to_string();
        let r = d.request("POST", "/api/chat", &body);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} short requests failed: {:?}",
        failures.len(),
        failures.first()
    );
    let restarts = d
        .log()
        .matches("restarted it with the larger context")
        .count();
    assert!(
        restarts > 0,
        "no restart happened: the race was not tried\n{}",
        d.log()
    );
}
