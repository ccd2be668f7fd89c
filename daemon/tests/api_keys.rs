//! API keys on the public API: none needed until one exists, then every request but the
//! probes must present one (Bearer or x-api-key), refusals in each API's own shape, keys
//! restricted to models, changes in force at once, and no start on an exposed address
//! without keys.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use vllama_testkit::{exchange, parse_responses, workspace_bin, Daemon, DaemonOptions, Response};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

/// One model whose tokens come 20 ms apart, for streams that last.
fn slow_daemon() -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake(),
            "m",
            &["env = { FAKE_VLLM_STARTUP_MS = \"50\", FAKE_VLLM_TOKEN_MS = \"20\" }"],
        ),
    )
}

fn daemon() -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(&fake(), "m", &["env = { FAKE_VLLM_STARTUP_MS = \"50\" }"])
            .fake_model(
                &fake(),
                "other",
                &["env = { FAKE_VLLM_STARTUP_MS = \"50\" }"],
            ),
    )
}

/// One request with extra headers.
fn call(d: &Daemon, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    parse_responses(&exchange(d.api, raw.as_bytes()))
        .into_iter()
        .next()
        .expect("a response")
}

fn add_key(d: &Daemon, name: &str, models: &[&str]) -> String {
    let r = d.admin(
        "POST",
        "/v1/keys",
        &json!({"name": name, "models": models}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["key"].as_str().unwrap().to_string()
}

/// A stream of `tokens` tokens with `key` on another thread; join it for the raw answer.
fn stream_with(d: &Daemon, key: &str, tokens: u32) -> std::thread::JoinHandle<String> {
    let long = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": tokens}}).to_string();
    let raw = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    );
    let api = d.api;
    std::thread::spawn(move || exchange(api, raw.as_bytes()))
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false, "options": {"num_predict": 2}}).to_string()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[test]
fn once_a_key_exists_every_request_but_the_probes_needs_one() {
    let d = daemon();
    // No keys: open, as Ollama is.
    assert_eq!(d.request("POST", "/api/chat", &chat("m")).status, 200);
    let key = add_key(&d, "ci", &[]);
    assert!(key.starts_with("vk-") && key.len() == 51, "{key}");

    // Refused without a key, in each API's shape, with WWW-Authenticate.
    let r = call(&d, "GET", "/api/tags", &[], "");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("API key"), "{v}");
    let r = call(&d, "GET", "/v1/models", &[], "");
    assert_eq!(r.status, 401);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    let r = call(&d, "POST", "/v1/messages", &[], "{}");
    assert_eq!(r.status, 401);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("authentication_error")),
        "{v}"
    );
    // A wrong key is refused too.
    let r = call(
        &d,
        "POST",
        "/api/chat",
        &[("Authorization", "Bearer vk-nope")],
        &chat("m"),
    );
    assert_eq!(r.status, 401);
    assert!(r.body.contains("invalid API key"), "{}", r.body);

    // What clients probe stays open.
    assert_eq!(call(&d, "GET", "/", &[], "").status, 200);
    assert_eq!(call(&d, "GET", "/api/version", &[], "").status, 200);
    // /metrics wants a key as well (metrics.require_key).
    assert_eq!(call(&d, "GET", "/metrics", &[], "").status, 401);

    // With the key, as Bearer (Ollama, OpenAI) or x-api-key (Anthropic).
    let auth = bearer(&key);
    let r = call(
        &d,
        "POST",
        "/api/chat",
        &[("Authorization", &auth)],
        &chat("m"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        &d,
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", &key)],
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let metrics = call(&d, "GET", "/metrics", &[("Authorization", &auth)], "").body;
    assert!(
        metrics.contains("vllama_auth_failures_total{reason=\"missing\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllama_auth_failures_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );

    // The access line names the key (never the secret).
    let log = d.log_with_access();
    assert!(log.contains("key_name=ci"), "{log}");
    assert!(!log.contains(&key), "the secret is in the log");
}

#[test]
fn a_key_for_some_models_is_refused_the_others() {
    let d = daemon();
    let key = add_key(&d, "only-m", &["m"]);
    let auth = bearer(&key);
    assert_eq!(
        call(
            &d,
            "POST",
            "/api/chat",
            &[("Authorization", &auth)],
            &chat("m")
        )
        .status,
        200
    );
    let r = call(
        &d,
        "POST",
        "/api/chat",
        &[("Authorization", &auth)],
        &chat("other"),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("may not use the model"), "{}", r.body);
    let r = call(
        &d,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        &json!({"model": "other:latest", "messages": []}).to_string(),
    );
    assert_eq!(r.status, 403);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    // The model lists show it only what it may use; an unrestricted key sees both.
    let names = |auth: &str, path: &str, list: &str, field: &str| -> Vec<String> {
        let r = call(&d, "GET", path, &[("Authorization", auth)], "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[field].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&auth, "/api/tags", "models", "name"), ["m:latest"]);
    assert_eq!(names(&auth, "/v1/models", "data", "id"), ["m:latest"]);
    let r = call(
        &d,
        "GET",
        "/v1/models/other:latest",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let all = bearer(&add_key(&d, "all", &[]));
    assert_eq!(
        names(&all, "/api/tags", "models", "name"),
        ["m:latest", "other:latest"]
    );
    let r = call(
        &d,
        "POST",
        "/api/chat",
        &[("Authorization", &all)],
        &chat("other"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // (One engine at a time here: `other` took `m`'s place.)
    assert_eq!(names(&all, "/api/ps", "models", "name"), ["other:latest"]);
    assert!(names(&auth, "/api/ps", "models", "name").is_empty());
}

#[test]
fn keys_change_at_once_without_dropping_a_request() {
    let d = slow_daemon();
    let first = add_key(&d, "first", &[]);
    // A stream let in with the first key...
    let stream = stream_with(&d, &first, 40);
    std::thread::sleep(Duration::from_millis(300));
    // ...goes on while keys are added and the first one removed.
    let second = add_key(&d, "second", &[]);
    assert_eq!(
        call(
            &d,
            "GET",
            "/api/tags",
            &[("Authorization", &bearer(&second))],
            ""
        )
        .status,
        200
    );
    let r = d.admin("POST", "/v1/keys/remove", r#"{"id":"first"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        call(
            &d,
            "GET",
            "/api/tags",
            &[("Authorization", &bearer(&first))],
            ""
        )
        .status,
        401
    );
    let text = stream.join().unwrap();
    assert!(
        text.contains("\"done\":true") && text.trim_end().ends_with("\r\n0"),
        "the stream was dropped: {text}"
    );

    // The list shows ids, names and use, never a secret.
    let r = d.admin("GET", "/v1/keys", "");
    let list: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "second");
    assert!(list[0]["last_used"].is_u64(), "{r:?}");
    assert!(!r.body.contains(&second));

    // A keys file edited by hand is read on reload.
    let keys_file = d.dir.path().join("state/api-keys.toml");
    let text = std::fs::read_to_string(&keys_file).unwrap();
    assert!(
        text.contains("name = \"second\"") && !text.contains(&second),
        "{text}"
    );
    std::fs::write(&keys_file, "# emptied by hand\n").unwrap();
    assert_eq!(d.admin("POST", "/v1/reload", "").status, 200);
    assert_eq!(
        call(&d, "GET", "/api/tags", &[], "").status,
        200,
        "no keys: open again"
    );
}

#[test]
fn ten_thousand_random_keys_are_refused_and_the_log_stays_short() {
    let d = daemon();
    let _key = add_key(&d, "real", &[]);
    let api = d.api;
    let flood = |round: u32, per_worker: u32| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut statuses = std::collections::BTreeMap::new();
                    for i in 0..per_worker {
                        let raw = format!(
                            "GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer vk-{round}{w}{i:08x}deadbeef\r\n\r\n"
                        );
                        let r = parse_responses(&exchange(api, raw.as_bytes()));
                        *statuses.entry(r.first().map_or(0, |r| r.status)).or_insert(0) += 1;
                    }
                    statuses
                })
            })
            .collect();
        let mut all = std::collections::BTreeMap::new();
        for w in workers {
            for (status, n) in w.join().unwrap() {
                *all.entry(status).or_insert(0u32) += n;
            }
        }
        all
    };
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap();
        kib
    };
    // A first thousand warms the allocator and the buffers; then 10 000 must not grow it.
    assert_eq!(flood(0, 250).get(&401), Some(&1_000));
    let before = rss();
    let all = flood(1, 2_500);
    let after = rss();
    assert_eq!(all.get(&401), Some(&10_000), "{all:?}");
    eprintln!("RSS {before} kB → {after} kB over 10 000 refusals");
    assert!(
        after < before + 2048,
        "RSS {before} kB → {after} kB over 10 000 refusals"
    );
    let refusals = d.log().matches("request refused").count();
    assert!(
        refusals <= 3,
        "{refusals} refusal lines for 11 000 refusals"
    );
}

#[test]
fn an_exposed_address_without_keys_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = vllama_testkit::free_port();
    let config = |extra: &str| {
        let path = dir.path().join("v.toml");
        std::fs::write(
            &path,
            format!(
                "[api]\nlisten = \"0.0.0.0:{port}\"\n{extra}[admin]\nsocket = \"{d}/a.sock\"\n[paths]\nstate_dir = \"{d}/s\"\nruntime_dir = \"{d}/r\"\ncache_dir = \"{d}/c\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        path
    };
    let out = std::process::Command::new(BIN)
        .args(["--config", config("").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no API key is configured")
            && stderr.contains("vllamactl key add")
            && stderr.contains("api.allow_unauthenticated"),
        "{stderr}"
    );

    // With a key in the keys file it serves.
    let (ring, secret, _) = vllamad::keys::KeyRing::default()
        .with_new("lan", &[], vllamad::keys::Limits::default())
        .unwrap();
    ring.save(&dir.path().join("s/api-keys.toml")).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["--config", config("").to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let up = vllama_testkit::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let raw = format!("GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {secret}\r\n\r\n");
    let served = up && exchange(addr, raw.as_bytes()).starts_with("HTTP/1.1 200");
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "did not serve with a key");

    // Without keys but allowed on purpose it serves as well.
    std::fs::remove_file(dir.path().join("s/api-keys.toml")).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args([
            "--config",
            config("allow_unauthenticated = true\n").to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = vllama_testkit::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let served = up
        && exchange(
            addr,
            b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200");
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "did not serve with allow_unauthenticated");
}

fn add_limited(d: &Daemon, name: &str, limits: Value) -> String {
    let r = d.admin(
        "POST",
        "/v1/keys",
        &json!({"name": name, "limits": limits}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["info"]["limits"], limits, "{v}");
    v["key"].as_str().unwrap().to_string()
}

#[test]
fn over_its_requests_per_minute_a_key_gets_429_and_recovers() {
    let d = daemon();
    let key = add_limited(&d, "sixty", json!({"rpm": 60}));
    let auth = bearer(&key);
    // The minute refills at one a second, so the first refusal comes after 60 or a few more.
    let until_refused = |method: &str, path: &str, body: &str| {
        (1..=200)
            .map(|i| (i, call(&d, method, path, &[("Authorization", &auth)], body)))
            .find(|(_, r)| r.status != 200)
            .expect("never refused")
    };
    let (n, r) = until_refused("GET", "/api/tags", "");
    assert!(n > 60, "refused after {} requests", n - 1);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.body.contains("requests per minute"), "{}", r.body);
    let (_, r) = until_refused("POST", "/v1/chat/completions", "{}");
    assert_eq!(r.status, 429);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    // Another key is not held back.
    let other = add_key(&d, "other", &[]);
    assert_eq!(
        call(
            &d,
            "GET",
            "/api/tags",
            &[("Authorization", &bearer(&other))],
            ""
        )
        .status,
        200
    );
    // A second later the minute has room for one more.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        call(&d, "GET", "/api/tags", &[("Authorization", &auth)], "").status,
        200
    );
    let metrics = call(
        &d,
        "GET",
        "/metrics",
        &[("Authorization", &bearer(&other))],
        "",
    )
    .body;
    assert!(
        metrics.contains("vllama_requests_rejected_total{model=\"\",reason=\"key_rpm\"} 2"),
        "{metrics}"
    );
}

#[test]
fn a_key_limited_to_one_request_at_once_waits_for_its_stream() {
    let d = slow_daemon();
    let key = add_limited(&d, "one", json!({"concurrency": 1}));
    let stream = stream_with(&d, &key, 30);
    std::thread::sleep(Duration::from_millis(300));
    let r = call(
        &d,
        "GET",
        "/api/tags",
        &[("Authorization", &bearer(&key))],
        "",
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("requests at once"), "{}", r.body);
    assert!(stream.join().unwrap().contains("\"done\":true"));
    assert_eq!(
        call(
            &d,
            "GET",
            "/api/tags",
            &[("Authorization", &bearer(&key))],
            ""
        )
        .status,
        200
    );
}

#[test]
fn tokens_per_minute_are_counted_from_the_answers() {
    let d = daemon();
    let key = add_limited(&d, "tokens", json!({"tpm": 30}));
    let auth = bearer(&key);
    let ask = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false, "options": {"num_predict": 16}}).to_string();
    // 5 prompt + 16 generated tokens each: the first two fit in 30 (the second goes over).
    for _ in 0..2 {
        let r = call(&d, "POST", "/api/chat", &[("Authorization", &auth)], &ask);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = call(&d, "POST", "/api/chat", &[("Authorization", &auth)], &ask);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("tokens per minute"), "{}", r.body);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // 12 tokens over, at half a token a second: 26 s.
    assert!((20..=30).contains(&wait), "Retry-After {wait}");
}

#[test]
fn behind_a_trusted_proxy_the_log_names_the_forwarded_client() {
    let forwarded = [("X-Forwarded-For", "203.0.113.7")];
    // By default the header is the client's own word: ignored.
    let d = daemon();
    assert_eq!(call(&d, "GET", "/api/tags", &forwarded, "").status, 200);
    let log = d.log_with_access();
    assert!(
        log.contains("client=127.0.0.1") && !log.contains("client=203.0.113.7"),
        "{log}"
    );
    // From a trusted proxy it is believed (up to the first untrusted hop).
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().set("api", "trusted_proxies = [\"127.0.0.0/8\"]"),
    );
    let _key = add_key(&d, "k", &[]);
    let chain = [("X-Forwarded-For", "6.6.6.6, 203.0.113.7")];
    assert_eq!(call(&d, "GET", "/api/tags", &chain, "").status, 401);
    let log = d.log();
    assert!(
        log.contains("client=203.0.113.7") && !log.contains("client=6.6.6.6"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("request refused") && l.contains("client=203.0.113.7")),
        "the refusal names the forwarded client: {log}"
    );
}
