//! Fair turns and client limits on the public API: a key flooding a busy engine does not
//! starve a light key (measured p50 latencies), and with no keys each client address has its
//! own `api.client_limits`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vllama_testkit::{
    exchange_within, parse_responses, workspace_bin, Daemon, DaemonOptions, Response,
};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

/// The engine runs 4 requests at once; a 20-token answer takes 200 ms.
const SLOTS: u32 = 4;
const TOKENS: u32 = 20;

fn daemon(options: DaemonOptions) -> Daemon {
    let fake = workspace_bin(BIN, "fake-vllm");
    Daemon::start(
        BIN,
        options
            .set("engine", &format!("max_in_flight = {SLOTS}"))
            .set("metrics", "require_key = false")
            .fake_model(
                &fake,
                "m",
                &["env = { FAKE_VLLM_STARTUP_MS = \"50\", FAKE_VLLM_TOKEN_MS = \"10\" }"],
            ),
    )
}

fn add_key(d: &Daemon, name: &str) -> String {
    let r = d.admin("POST", "/v1/keys", &json!({ "name": name }).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["key"].as_str().unwrap().to_string()
}

fn chat(api: SocketAddr, key: &str) -> Response {
    chat_of(api, key, TOKENS)
}

fn chat_of(api: SocketAddr, key: &str, tokens: u32) -> Response {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}).to_string();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = exchange_within(api, raw.as_bytes(), Duration::from_secs(120));
    parse_responses(&text)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response in {text:?}"))
}

/// The median latency of `n` requests one after another with `key`.
fn p50(api: SocketAddr, key: &str, n: usize) -> Duration {
    let mut took: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = chat(api, key);
            assert_eq!(r.status, 200, "{}", r.body);
            t.elapsed()
        })
        .collect();
    took.sort();
    took[n / 2]
}

/// Requests waiting for a turn at the engine of `m`.
fn queued(d: &Daemon) -> u32 {
    d.get("/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix("vllama_requests_queued{model=\"m:latest\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `clients` threads sending requests with `key` back to back until `stop`, of 10 to 30
/// tokens (answers of one length would all end at once, in step, unlike a real load).
fn flood(
    api: SocketAddr,
    key: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU32>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let (key, stop, done) = (key.to_string(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = client as u32;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(7).wrapping_add(3);
                    let r = chat_of(api, &key, 10 + n % 21);
                    assert_eq!(r.status, 200, "{}", r.body);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

#[test]
fn a_flooding_key_does_not_starve_a_light_one() {
    let d = daemon(DaemonOptions::default());
    let (heavy, light) = (add_key(&d, "heavy"), add_key(&d, "light"));
    chat(d.api, &light); // the engine starts
    let unloaded = p50(d.api, &light, 7);

    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let flooders = flood(d.api, &heavy, 64, &stop, &done);
    // Until the flood has filled the engine and its queue.
    assert!(vllama_testkit::wait_until(Duration::from_secs(20), || {
        queued(&d) >= 50
    }));
    let loaded = p50(d.api, &light, 7);
    // The same key as the flood waits behind its own queue: what every client would get
    // from an engine's first-come-first-served queue.
    let behind = {
        let t = Instant::now();
        assert_eq!(chat(d.api, &heavy).status, 200);
        t.elapsed()
    };
    let metrics = d.get("/metrics").body;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    eprintln!(
        "light key p50: {unloaded:?} unloaded, {loaded:?} under a 64-client flood ({} flood answers); a flood request: {behind:?}",
        done.load(Ordering::Relaxed)
    );
    assert!(
        loaded <= unloaded * 2,
        "light key p50 {loaded:?} under the flood, {unloaded:?} alone"
    );
    assert!(
        behind > unloaded * 5,
        "a flood request waits its queue: {behind:?} (alone {unloaded:?})"
    );
    assert!(
        metrics.contains("vllama_requests_queued{model=\"m:latest\"}"),
        "{metrics}"
    );
}

/// One request from `from` (a loopback address of its own) to `api`.
async fn chat_from(from: &str, api: SocketAddr) -> Response {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(api).await.unwrap();
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    parse_responses(&text).into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_each_client_address_has_its_own_limits() {
    let d = tokio::task::spawn_blocking(|| {
        daemon(DaemonOptions::default().set("api.client_limits", "rpm = 2"))
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let r = chat_from("127.0.0.1", d.api).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let over = chat_from("127.0.0.1", d.api).await;
    assert_eq!(over.status, 429, "{}", over.body);
    let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=31).contains(&retry), "{retry}");
    assert_eq!(
        over.json()["error"]["type"],
        "rate_limit_error",
        "{}",
        over.body
    );
    assert!(over.body.contains("client address"), "{}", over.body);
    // Another address has its own minute.
    let other = chat_from("127.0.0.2", d.api).await;
    assert_eq!(other.status, 200, "{}", other.body);
    // Probes are not counted.
    let version = tokio::task::spawn_blocking(move || {
        let v = d.get("/api/version").status;
        let m = d.get("/metrics").body;
        (v, m)
    })
    .await
    .unwrap();
    assert_eq!(version.0, 200);
    assert!(
        version
            .1
            .contains("vllama_requests_rejected_total{model=\"\",reason=\"client_rpm\"} 1"),
        "{}",
        version.1
    );
}
