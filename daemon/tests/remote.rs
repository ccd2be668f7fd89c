//! Remote engines (`[models."name"] remote`): an engine that runs elsewhere — here the fake
//! engine on loopback TCP over TLS with a private CA and vLLM's `--api-key`, standing in for a
//! vLLM on another machine — served under an Ollama name. Ollama's translation over it, the
//! token sent and the client's own never, the engine down (a fast 503 in Ollama's shape) and
//! back, a wrong token named, and no local engine started for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vllama_testkit::{free_port, wait_until, workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");
const KEY: &str = "sk-remote-engine-key";

/// A CA and a certificate it signed for `localhost` and 127.0.0.1: (ca, cert, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=vllama test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// The fake engine as a remote vLLM: TCP on `port`, TLS, `--api-key`.
fn remote_engine(dir: &Path, port: u16) -> Child {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    Command::new(workspace_bin(BIN, "fake-vllm"))
        .args(["serve", "/models/big", "--served-model-name", "org/big"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--api-key", KEY])
        .arg("--ssl-certfile")
        .arg(&cert)
        .arg("--ssl-keyfile")
        .arg(&key)
        .env("FAKE_VLLM_STARTUP_MS", "0")
        .env("FAKE_VLLM_STATE_DIR", dir.join("remote-state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fake-vllm")
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn ollama_chat(d: &Daemon, model: &str, stream: bool) -> vllama_testkit::Response {
    let body = serde_json::json!({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "hello there"}],
        "options": {"num_predict": 4}
    });
    d.request("POST", "/api/chat", &body.to_string())
}

/// The requests the remote engine saw.
fn seen(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("remote-state/requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_remote_engine_over_tls_with_a_token_serves_ollama_clients_and_comes_back_after_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = certificates(dir.path());
    std::fs::write(dir.path().join("token"), format!("{KEY}\n")).unwrap();
    std::fs::write(dir.path().join("wrong"), "sk-not-this-one\n").unwrap();
    let port = free_port();
    let engine = remote_engine(dir.path(), port);
    let url = format!("https://localhost:{port}");
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set(
                "models.\"big\"",
                &format!(
                    "remote = \"{url}\"\ntoken_file = \"{}\"\nca_file = \"{}\"",
                    dir.path().join("token").display(),
                    ca.display()
                ),
            )
            .set(
                "models.\"wrong\"",
                &format!(
                    "remote = \"{url}\"\ntoken_file = \"{}\"\nca_file = \"{}\"",
                    dir.path().join("wrong").display(),
                    ca.display()
                ),
            )
            .set("models.\"untrusted\"", &format!("remote = \"{url}\"")),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));

    // Whole and streamed, through Ollama's translation; the engine's one model name learnt.
    let resp = ollama_chat(&d, "big", false);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let v = resp.json();
    assert_eq!(v["done"], true, "{v}");
    assert!(
        !v["message"]["content"].as_str().unwrap_or("").is_empty(),
        "{v}"
    );
    let resp = ollama_chat(&d, "big", true);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let lines: Vec<Value> = resp
        .body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.len() >= 3 && lines.last().unwrap()["done"] == true,
        "{}",
        resp.body
    );
    // The OpenAI pass-through, with the client's own credentials, which stay here.
    let body = r#"{"model":"big","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer client-secret\r\nx-api-key: client-secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = vllama_testkit::exchange(d.api, raw.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let chats: Vec<Value> = seen(dir.path())
        .into_iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 3, "{chats:?}");
    for r in &chats {
        assert_eq!(r["body"]["model"], "org/big", "the remote's own name: {r}");
        assert_eq!(
            r["headers"]["authorization"],
            format!("Bearer {KEY}"),
            "{r}"
        );
        assert!(
            r["headers"].get("x-api-key").is_none(),
            "the client's key went on: {r}"
        );
        assert_eq!(r["headers"]["host"], format!("localhost:{port}"), "{r}");
    }
    // No engine of its own: nothing spawned, shown as remote, no GPU.
    let engines = d.engines();
    let big = engines
        .iter()
        .find(|e| e["model"] == "big:latest")
        .expect("listed");
    assert_eq!(big["kind"], "remote", "{big}");
    assert_eq!(big["endpoint"], url.as_str(), "{big}");
    assert!(big["pid"].is_null(), "{big}");
    // The load balancer's check: open, from memory, listing it.
    let health = d.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(
        (h["status"].as_str(), h["ready"].as_bool()),
        (Some("ok"), Some(true)),
        "{h}"
    );
    assert_eq!(h["loaded"], serde_json::json!(["big:latest"]), "{h}");
    assert_eq!(h["models"][0]["kind"], "remote", "{h}");
    assert_eq!(h["queue_depth"], 0, "{h}");
    assert!(h.get("gpu_memory_free_bytes").is_none(), "no GPU here: {h}");
    let ps = d.get("/api/ps").json();
    assert!(
        ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "big:latest"),
        "{ps}"
    );

    // Its own metrics, federated into vllamad's scrape with the model's label.
    let metrics = d.get("/metrics").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vllm_generation_tokens_total{")
                && l.contains("model=\"big:latest\"")),
        "{metrics}"
    );

    // A wrong token: refused at once, naming the remote and the token.
    let resp = ollama_chat(&d, "wrong", false);
    assert_eq!(resp.status, 503, "{}", resp.body);
    let msg = resp.json()["error"].as_str().unwrap_or("").to_string();
    assert!(msg.contains(&url) && msg.contains("token"), "{msg}");
    // A certificate from a CA not trusted: a TLS error, naming the remote.
    let resp = ollama_chat(&d, "untrusted", false);
    assert_eq!(resp.status, 503, "{}", resp.body);
    let msg = resp.json()["error"].as_str().unwrap_or("").to_string();
    assert!(
        msg.contains(&url) && msg.to_lowercase().contains("certificate"),
        "{msg}"
    );

    // The engine goes away: a 503 in Ollama's shape, at once, and again while it is away.
    kill(engine);
    for _ in 0..3 {
        let t = Instant::now();
        let resp = ollama_chat(&d, "big", false);
        assert_eq!(resp.status, 503, "{}", resp.body);
        let msg = resp.json()["error"].as_str().unwrap_or("").to_string();
        assert!(msg.contains("big") && msg.contains(&url), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    }
    // Back: served again once the retry sees it (back-off capped at 10 s).
    let engine = remote_engine(dir.path(), port);
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(25), || ollama_chat(&d, "big", false)
            .status
            == 200),
        "{}",
        d.log()
    );
    eprintln!(
        "served again {:?} after the engine returned",
        back.elapsed()
    );
    kill(engine);
}
