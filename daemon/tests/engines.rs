//! Engines under the real daemon, with the fake engine (tests/src/bin/fake-vllm.rs) standing
//! in for `vllm serve`: on-demand start, failures, crashes and restarts, stopping, keep_alive,
//! the queue bound, eviction and sleep. Each test fails if the behaviour it names breaks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use vllama_testkit::{
    chat_body, process_alive, spawn_request, wait_until, workspace_bin, Daemon, DaemonOptions,
};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

fn chat(d: &Daemon, model: &str) -> vllama_testkit::Response {
    d.request("POST", "/v1/chat/completions", &chat_body(model, 3, false))
}

fn pid_of(d: &Daemon, model: &str) -> i32 {
    d.engine(model).and_then(|e| e["pid"].as_i64()).unwrap_or(0) as i32
}

/// A daemon serving one fake model, `lines` being its extra `[models."name"]` keys.
fn serve(name: &str, lines: &[&str]) -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(&fake(), name, lines),
    )
}

/// Waits up to `secs` for the model's engine to reach `state`.
fn wait_state(d: &Daemon, model: &str, state: &str, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || state_of(d, model) == state)
}

fn state_of(d: &Daemon, model: &str) -> String {
    d.engine(model)
        .map(|e| e["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| "absent".into())
}

#[test]
fn concurrent_first_requests_start_one_engine_and_get_the_served_name() {
    let d = serve("tiny", &["env = { FAKE_VLLM_STARTUP_MS = \"500\" }"]);
    let handles: Vec<_> = (0..8)
        .map(|_| spawn_request(d.api, "/v1/chat/completions", chat_body("tiny", 2, false)))
        .collect();
    for h in handles {
        let resp = h.join().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.json()["object"], "chat.completion");
    }
    assert_eq!(d.log_count("engine spawned"), 1, "{}", d.log());
    // The engine saw the served name, not the name the client used.
    let requests = std::fs::read_to_string(d.fake_state("tiny").join("requests.jsonl")).unwrap();
    let chats: Vec<Value> = requests
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 8);
    assert!(chats.iter().all(|r| r["body"]["model"] == "tiny:latest"));
    // The command line and environment vllamad gave the engine.
    let argv: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(d.fake_state("tiny").join("argv.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(argv[1], "serve");
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "--served-model-name" && w[1] == "tiny:latest"));
    // engine.max_in_flight unset: vLLM's own default for a CPU engine, said explicitly.
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--max-num-seqs" && w[1] == "128"),
        "{argv:?}"
    );
    let uds = argv
        .windows(2)
        .find(|w| w[0] == "--uds")
        .map(|w| w[1].clone())
        .unwrap();
    assert!(
        uds.ends_with(".sock") && uds.contains("/run/engines/"),
        "{uds}"
    );
    let env: Value = serde_json::from_str(
        &std::fs::read_to_string(d.fake_state("tiny").join("env.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(env["HF_HUB_OFFLINE"], "1");
    assert!(env["TMPDIR"].as_str().unwrap().contains("/run/tmp/"));
    assert!(env["VLLM_CACHE_ROOT"]
        .as_str()
        .unwrap()
        .ends_with("/cache/vllm"));
    assert!(
        env.get("NOTIFY_SOCKET").is_none(),
        "the daemon's environment leaked"
    );
}

#[test]
fn startup_failure_reports_the_engines_last_lines() {
    let d = serve("broken", &["env = { FAKE_VLLM_FAIL_STARTUP = \"torch.OutOfMemoryError: CUDA out of memory (fake)\" }"]);
    let resp = chat(&d, "broken");
    assert_eq!(resp.status, 500, "{}", resp.body);
    let msg = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("exited during start-up"), "{msg}");
    assert!(msg.contains("CUDA out of memory (fake)"), "{msg}");
    assert_eq!(state_of(&d, "broken:latest"), "failed");
    assert!(d.engine("broken:latest").unwrap()["last_error"]
        .as_str()
        .unwrap()
        .contains("out of memory"));
}

#[test]
fn load_timeout_fails_the_request_and_kills_the_engine() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "load_timeout = \"1s\"")
            .set("engine", "stop_grace = \"1s\"")
            .fake_model(&fake(), "slow", &["env = { FAKE_VLLM_HANG = \"1\" }"]),
    );
    let t = Instant::now();
    let resp = chat(&d, "slow");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(resp.status >= 500, "{}", resp.body);
    assert!(
        resp.body.contains("did not become ready within"),
        "{}",
        resp.body
    );
    let log = d.log();
    let pid: i32 = log
        .lines()
        .find(|l| l.contains("engine spawned"))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || !process_alive(pid)),
        "hung engine not killed"
    );
}

#[test]
fn crash_mid_stream_gives_an_error_event_and_the_engine_restarts() {
    let d = serve("fragile", &["env = { FAKE_VLLM_CRASH_MID_STREAM = \"1\" }"]);
    let resp = d.request(
        "POST",
        "/v1/chat/completions",
        &chat_body("fragile", 10, true),
    );
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("\"content\":\" the\""), "{}", resp.body);
    let last = resp.body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("data: {\"error\""), "{}", resp.body);
    assert!(
        last.contains("stopped in the middle of the response"),
        "{last}"
    );
    assert!(wait_state(&d, "fragile:latest", "failed", 5));
    assert_eq!(d.engine("fragile:latest").unwrap()["crashes"], 1);
    // The next request restarts it (non-streaming: this fake crashes only mid-stream).
    let resp = chat(&d, "fragile");
    assert_eq!(resp.status, 200, "{}", resp.body);
    let engine = d.engine("fragile:latest").unwrap();
    assert_eq!(engine["restarts"], 1);
    assert_eq!(engine["state"], "ready");
}

#[test]
fn exit_0_is_a_crash_and_restarts_back_off() {
    let d = serve("flaky", &["env = { FAKE_VLLM_EXIT_AFTER = \"1\" }"]);
    assert_eq!(chat(&d, "flaky").status, 200);
    assert!(wait_state(&d, "flaky:latest", "failed", 5));
    let engine = d.engine("flaky:latest").unwrap();
    assert_eq!(engine["crashes"], 1);
    assert!(
        engine["last_error"]
            .as_str()
            .unwrap()
            .contains("exited unexpectedly (exit status: 0)"),
        "{engine}"
    );
    // Asked again at once: served, but not before the 1 s backoff.
    let t = Instant::now();
    assert_eq!(chat(&d, "flaky").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "restarted after {:?}",
        t.elapsed()
    );
    // Second crash: the backoff doubles.
    assert!(wait_state(&d, "flaky:latest", "failed", 5));
    let t = Instant::now();
    assert_eq!(chat(&d, "flaky").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "restarted after {:?}",
        t.elapsed()
    );
    assert_eq!(d.engine("flaky:latest").unwrap()["restarts"], 2);
}

#[test]
fn a_pinned_engine_restarts_by_itself() {
    let d = serve(
        "always",
        &["pinned = true", "env = { FAKE_VLLM_EXIT_AFTER = \"1\" }"],
    );
    // Pinned models start with the daemon.
    assert!(
        wait_until(Duration::from_secs(5), || state_of(&d, "always:latest")
            == "ready"),
        "{}",
        d.log()
    );
    let first = pid_of(&d, "always:latest");
    assert_eq!(chat(&d, "always").status, 200);
    // It crashes; no request asks for it, yet it comes back.
    assert!(wait_until(Duration::from_secs(6), || {
        state_of(&d, "always:latest") == "ready" && pid_of(&d, "always:latest") != first
    }));
}

#[test]
fn a_sigterm_ignoring_engine_and_its_grandchild_are_killed_after_the_grace() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "stop_grace = \"500ms\"")
            .fake_model(
                &fake(),
                "stubborn",
                &["env = { FAKE_VLLM_IGNORE_SIGTERM = \"1\", FAKE_VLLM_GRANDCHILD = \"1\" }"],
            ),
    );
    assert_eq!(chat(&d, "stubborn").status, 200);
    let leader = pid_of(&d, "stubborn:latest");
    let grandchild: i32 = std::fs::read_to_string(d.fake_state("stubborn").join("grandchild.pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(process_alive(leader) && process_alive(grandchild));
    let t = Instant::now();
    let resp = d.admin("POST", "/v1/unload", r#"{"model":"stubborn"}"#);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!process_alive(leader), "leader survived");
    assert!(!process_alive(grandchild), "grandchild survived");
    assert!(d.engine("stubborn:latest").is_none());
}

#[test]
fn a_crash_leaves_no_grandchild_behind() {
    let d = serve(
        "orphaner",
        &["env = { FAKE_VLLM_EXIT_AFTER = \"1\", FAKE_VLLM_GRANDCHILD = \"1\" }"],
    );
    assert_eq!(chat(&d, "orphaner").status, 200);
    let grandchild: i32 = std::fs::read_to_string(d.fake_state("orphaner").join("grandchild.pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait_state(&d, "orphaner:latest", "failed", 5));
    assert!(
        wait_until(Duration::from_secs(3), || !process_alive(grandchild)),
        "orphan survived the crash"
    );
}

#[test]
fn daemon_sigterm_and_sigkill_leave_no_engine_process() {
    // SIGTERM: every engine is stopped before the daemon exits.
    let mut d = serve("m", &["env = { FAKE_VLLM_GRANDCHILD = \"1\" }"]);
    assert_eq!(chat(&d, "m").status, 200);
    let leader = pid_of(&d, "m:latest");
    let grandchild: i32 = std::fs::read_to_string(d.fake_state("m").join("grandchild.pid"))
        .unwrap()
        .parse()
        .unwrap();
    d.signal(15);
    assert!(d.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(!process_alive(leader) && !process_alive(grandchild));

    // SIGKILL: PR_SET_PDEATHSIG takes the leader; the next daemon on the same runtime
    // directory kills what the leader left (EngineCore in real vLLM).
    let shared = tempfile::tempdir().unwrap();
    let run = shared.path().join("run");
    let options = DaemonOptions::default()
        .set("paths", &format!("runtime_dir = \"{}\"", run.display()))
        .fake_model(&fake(), "m", &["env = { FAKE_VLLM_GRANDCHILD = \"1\" }"]);
    let d = Daemon::start(BIN, options.clone());
    assert_eq!(chat(&d, "m").status, 200);
    let leader = pid_of(&d, "m:latest");
    let grandchild: i32 = std::fs::read_to_string(d.fake_state("m").join("grandchild.pid"))
        .unwrap()
        .parse()
        .unwrap();
    drop(d); // SIGKILL
    assert!(
        wait_until(Duration::from_secs(3), || !process_alive(leader)),
        "leader outlived the daemon"
    );
    assert!(
        process_alive(grandchild),
        "test premise: the grandchild outlives a leader-only kill"
    );
    let next = Daemon::start(BIN, options);
    assert!(
        wait_until(Duration::from_secs(3), || !process_alive(grandchild)),
        "orphan not swept at start"
    );
    assert!(next.log().contains("killing an engine left behind"));
}

#[test]
fn keep_alive_default_zero_and_forever() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "keep_alive = \"1s\"")
            .fake_model(&fake(), "a", &[])
            .fake_model(&fake(), "b", &["keep_alive = \"-1\""])
            .set("engine", "max_loaded = 3"),
    );
    assert_eq!(chat(&d, "a").status, 200);
    assert_eq!(chat(&d, "b").status, 200);
    let a = d.engine("a:latest").unwrap();
    assert!(a["expires_at"].is_string(), "{a}");
    assert!(
        wait_until(Duration::from_secs(4), || d.engine("a:latest").is_none()),
        "a not unloaded after 1s"
    );
    assert!(d.engine("b:latest").is_some(), "b (forever) was unloaded");
    assert_eq!(d.engine("b:latest").unwrap()["expires_at"], Value::Null);

    // A request's keep_alive replaces the model's: 0 = unload once idle.
    let resp = d.admin("POST", "/v1/preload", r#"{"model":"b","keep_alive":"0"}"#);
    assert!(resp.body.contains("\"state\":\"ready\""), "{}", resp.body);
    assert!(
        wait_until(Duration::from_secs(3), || d.engine("b:latest").is_none()),
        "keep_alive 0 did not unload"
    );
}

#[test]
fn the_queue_bound_answers_busy() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "max_queue = 2")
            .fake_model(&fake(), "q", &["env = { FAKE_VLLM_TOKEN_MS = \"100\" }"]),
    );
    assert_eq!(chat(&d, "q").status, 200, "warm up");
    let handles: Vec<_> = (0..5)
        .map(|_| spawn_request(d.api, "/v1/chat/completions", chat_body("q", 10, false)))
        .collect();
    let responses: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let busy: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok, 2, "{responses:?}");
    assert_eq!(busy.len(), 3);
    assert!(busy[0]
        .body
        .contains("server busy, please try again.  maximum pending requests exceeded"));
}

#[test]
fn eviction_is_lru_and_spares_busy_models() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "max_loaded = 2")
            .fake_model(&fake(), "a", &[])
            .fake_model(&fake(), "b", &[])
            .fake_model(&fake(), "c", &["env = { FAKE_VLLM_TOKEN_MS = \"300\" }"]),
    );
    assert_eq!(chat(&d, "a").status, 200);
    assert_eq!(chat(&d, "b").status, 200);
    assert_eq!(chat(&d, "a").status, 200); // b is now the least recently used
    assert_eq!(chat(&d, "c").status, 200);
    let loaded: Vec<String> = d
        .engines()
        .iter()
        .map(|e| e["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(loaded, ["a:latest", "c:latest"], "b (LRU) should have gone");

    // c busy with a slow request, a idle: loading b evicts a, not c.
    let slow = spawn_request(d.api, "/v1/chat/completions", chat_body("c", 10, false));
    assert!(wait_until(Duration::from_secs(2), || d
        .engine("c:latest")
        .is_some_and(|e| e["pending"] == 1)));
    assert_eq!(chat(&d, "b").status, 200);
    let loaded: Vec<String> = d
        .engines()
        .iter()
        .map(|e| e["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        loaded,
        ["b:latest", "c:latest"],
        "the busy model was evicted"
    );
    assert_eq!(slow.join().unwrap().status, 200);
}

#[test]
fn pinned_models_are_never_evicted() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "max_loaded = 1")
            .fake_model(&fake(), "pinned", &["pinned = true"])
            .fake_model(&fake(), "other", &[]),
    );
    assert!(wait_state(&d, "pinned:latest", "ready", 5));
    let resp = chat(&d, "other");
    assert_eq!(resp.status, 503, "{}", resp.body);
    let msg = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("engine.max_loaded") && msg.contains("pinned:latest"),
        "{msg}"
    );
    assert_eq!(state_of(&d, "pinned:latest"), "ready");
}

#[test]
fn sleep_then_wake_instead_of_a_cold_start() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "max_loaded = 1")
            .fake_model(&fake(), "sleepy", &["sleep = true"])
            .fake_model(&fake(), "other", &[]),
    );
    assert_eq!(chat(&d, "sleepy").status, 200);
    let pid = pid_of(&d, "sleepy:latest");
    let env: Value = serde_json::from_str(
        &std::fs::read_to_string(d.fake_state("sleepy").join("env.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(env["VLLM_SERVER_DEV_MODE"], "1");

    // Room for "other": sleepy is put to sleep, not stopped.
    assert_eq!(chat(&d, "other").status, 200);
    assert_eq!(state_of(&d, "sleepy:latest"), "sleeping");
    assert_eq!(pid_of(&d, "sleepy:latest"), pid);

    // Asked again: "other" makes room, sleepy wakes in place (same process).
    assert_eq!(chat(&d, "sleepy").status, 200);
    assert_eq!(state_of(&d, "sleepy:latest"), "ready");
    assert_eq!(
        pid_of(&d, "sleepy:latest"),
        pid,
        "cold-started instead of woken"
    );
    assert!(d.engine("other:latest").is_none());
    let requests = std::fs::read_to_string(d.fake_state("sleepy").join("requests.jsonl")).unwrap();
    let sleep_at = requests.find("\"/sleep\"").expect("no /sleep");
    let wake_at = requests.find("\"/wake_up\"").expect("no /wake_up");
    assert!(sleep_at < wake_at);
    assert_eq!(d.log_count("engine spawned"), 2, "sleepy once, other once");
}

#[test]
fn a_client_that_leaves_aborts_the_engine_request() {
    let d = serve("long", &["env = { FAKE_VLLM_TOKEN_MS = \"50\" }"]);
    assert_eq!(chat(&d, "long").status, 200, "warm up");
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(d.api).unwrap();
        let body = chat_body("long", 200, true);
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    } // the client goes away after the first bytes
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log()
            .contains("client disconnected: request aborted")),
        "the engine kept generating for a client that left"
    );
    assert!(wait_until(Duration::from_secs(2), || d
        .engine("long:latest")
        .is_some_and(|e| e["pending"] == 0)));
}

#[test]
fn unknown_and_invalid_models() {
    let d = serve("tiny", &[]);
    let resp = chat(&d, "nothing-here");
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.json()["error"]["message"],
        "model \"nothing-here:latest\" not found, try pulling it first (vllamactl pull nothing-here:latest)"
    );
    let resp = chat(&d, "../../etc/passwd");
    assert_eq!(resp.status, 400);
    let resp = chat(&d, "Qwen/Qwen2.5-0.5B-Instruct");
    assert_eq!(resp.status, 404);
    assert!(
        resp.body
            .contains("not found, try pulling it first (vllamactl pull Qwen/Qwen2.5-0.5B-Instruct"),
        "{}",
        resp.body
    );
}

#[test]
fn a_restart_after_a_crash_binds_despite_the_stale_socket() {
    // Like real vLLM, the fake does not unlink its socket when it dies; it refuses to start
    // over a leftover file only if the daemon did not clean it up (FAKE_VLLM_STRICT_BIND).
    let d = serve(
        "rebind",
        &["env = { FAKE_VLLM_EXIT_AFTER = \"1\", FAKE_VLLM_STRICT_BIND = \"1\" }"],
    );
    assert_eq!(chat(&d, "rebind").status, 200);
    assert!(wait_state(&d, "rebind:latest", "failed", 5));
    let resp = chat(&d, "rebind");
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[test]
fn a_stream_that_ends_without_done_gets_an_error_event() {
    let d = serve("cut", &["env = { FAKE_VLLM_CUT_STREAM = \"1\" }"]);
    let resp = d.request("POST", "/v1/chat/completions", &chat_body("cut", 10, true));
    assert_eq!(resp.status, 200);
    let last = resp.body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("ended without [DONE]"), "{}", resp.body);
    // A complete stream gets no such event.
    let d2 = serve("ok", &[]);
    let resp = d2.request("POST", "/v1/chat/completions", &chat_body("ok", 3, true));
    assert!(
        resp.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        resp.body
    );
}

#[test]
fn the_tcp_transport_for_vllm_builds_without_uds() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "transport = \"tcp\"")
            .fake_model(&fake(), "tcp", &[]),
    );
    assert_eq!(chat(&d, "tcp").status, 200);
    let argv: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(d.fake_state("tcp").join("argv.json")).unwrap(),
    )
    .unwrap();
    assert!(!argv.iter().any(|a| a == "--uds"), "{argv:?}");
    let host = argv
        .windows(2)
        .find(|w| w[0] == "--host")
        .map(|w| w[1].clone());
    assert_eq!(
        host.as_deref(),
        Some("127.0.0.1"),
        "engines listen on loopback only"
    );
    let port: u16 = argv.windows(2).find(|w| w[0] == "--port").unwrap()[1]
        .parse()
        .unwrap();
    let endpoint = d.engine("tcp:latest").unwrap()["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(endpoint, format!("http://127.0.0.1:{port}"));
    // Streaming works over it too.
    let resp = d.request("POST", "/v1/chat/completions", &chat_body("tcp", 3, true));
    assert!(
        resp.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        resp.body
    );
}
