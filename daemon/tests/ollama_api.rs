//! The Ollama API's wire behaviour against the real daemon and the fake engine: NDJSON
//! framing, errors (hostile bodies never give 500), CORS, the Host guard, a mid-stream engine
//! death as an NDJSON error line, and a departing client aborting the engine request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use vllama_testkit::{exchange, parse_responses, wait_until, workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

fn daemon() -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("api", "origins = [\"https://*.example.org\"]")
            .fake_model(&fake(), "tiny", &[])
            .fake_model(
                &fake(),
                "fragile",
                &["env = { FAKE_VLLM_CRASH_MID_STREAM = \"1\" }"],
            )
            .fake_model(&fake(), "slow", &["env = { FAKE_VLLM_TOKEN_MS = \"50\" }"])
            .set("engine", "max_loaded = 3"),
    )
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn chat_streams_ndjson_by_default() {
    let d = daemon();
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 3}});
    let resp = d.request("POST", "/api/chat", &body.to_string());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    let objs = lines(&resp.body);
    assert_eq!(objs.len(), 4, "3 tokens + the final object: {objs:?}");
    for o in &objs[..3] {
        assert_eq!(o["done"], false);
        assert_eq!(o["model"], "tiny");
        assert_eq!(o["message"]["role"], "assistant");
    }
    let last = &objs[3];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 3);
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[key].is_u64(), "{key} missing: {last}");
    }
    assert!(last["total_duration"].as_u64() > last["eval_duration"].as_u64());

    let whole = d.request("POST", "/api/chat", &json!({"model": "tiny", "stream": false, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 3}}).to_string());
    assert_eq!(
        whole.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let o = whole.json();
    assert_eq!(o["message"]["content"], " the llama serves");
    assert_eq!(o["done"], true);
}

/// A message's text reaches the engine as the text the client meant, whether vllamad
/// passes it on as written (escapes and all) or reads it and writes it again (a body with a
/// `\u` escape): the fake engine counts the prompt's words, which only the unescaped text
/// has eight of.
#[test]
fn escaped_texts_reach_the_engine_as_their_text() {
    let d = daemon();
    for text in [
        r#"one\ntwo\tthree\nfour \"five\" six\r\nseven \/eight"#,
        r#"one\ntwo\tthree\nfour \"five\" six\r\nseven caf\u00e9"#,
    ] {
        for (route, raw) in [
            ("/api/chat", false),
            ("/api/generate", false),
            ("/api/generate", true),
        ] {
            let body = match route {
                "/api/chat" => format!(
                    r#"{{"model":"tiny","stream":false,"messages":[{{"role":"user","content":"{text}"}}],"options":{{"num_predict":1}}}}"#
                ),
                _ => format!(
                    r#"{{"model":"tiny","stream":false,"raw":{raw},"prompt":"{text}","options":{{"num_predict":1}}}}"#
                ),
            };
            let r = d.request("POST", route, &body);
            assert_eq!(r.status, 200, "{route} {body}: {}", r.body);
            // eight words, and one for the message (or for the start of a raw prompt)
            assert_eq!(r.json()["prompt_eval_count"], 9, "{route} {body}");
        }
    }
}

#[test]
fn hostile_bodies_get_4xx_never_500() {
    let d = daemon();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/api/chat", "{\"model\": \"tiny\",".into(), 400, "invalid JSON at line 1"),
        ("/api/chat", "[1,2]".into(), 400, "JSON object"),
        ("/api/chat", "".into(), 400, "missing request body"),
        ("/api/chat", json!({"messages": []}).to_string(), 400, "model is required"),
        ("/api/chat", json!({"model": ""}).to_string(), 400, "model is required"),
        ("/api/chat", json!({"model": 7}).to_string(), 400, "model must be a string"),
        ("/api/chat", json!({"model": "../../x"}).to_string(), 400, "invalid model name"),
        ("/api/chat", json!({"model": "tiny", "messages": "hi"}).to_string(), 400, "messages must be a list"),
        ("/api/chat", json!({"model": "tiny", "messages": [{"role": "user", "content": 5}]}).to_string(), 400, "content must be a string"),
        ("/api/chat", json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 1e300}}).to_string(), 400, "num_predict"),
        ("/api/chat", json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"}).to_string(), 400, "keep_alive"),
        ("/api/chat", json!({"model": "tiny", "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]}).to_string(), 400, "images"),
        ("/api/chat", json!({"model": "tiny", "stream": "yes"}).to_string(), 400, "stream must be true or false"),
        ("/api/chat", json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "format": "yaml"}).to_string(), 400, "invalid format"),
        ("/api/chat", deep, 400, "invalid JSON"),
        ("/api/generate", json!({"model": "tiny", "prompt": "x", "suffix": "y"}).to_string(), 400, "suffix"),
        ("/api/generate", json!({"model": "tiny", "prompt": 3}).to_string(), 400, "prompt must be a string"),
        ("/api/embed", json!({"model": "tiny", "input": [1, 2]}).to_string(), 400, "input must be"),
        ("/api/show", json!({}).to_string(), 400, "model is required"),
        ("/api/show", json!({"model": "nope"}).to_string(), 404, "not found"),
        ("/api/chat", json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).to_string(), 404, "not found, try pulling it first"),
    ];
    for (path, body, status, needle) in cases {
        let resp = d.request("POST", path, &body);
        assert_eq!(resp.status, status, "{path} {body:.80}: {}", resp.body);
        let msg = resp.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            msg.contains(needle),
            "{path} {body:.80}: {msg:?} lacks {needle:?}"
        );
    }
    assert_eq!(d.request("POST", "/api/create", "{}").status, 501);
    assert_eq!(d.request("POST", "/api/blobs/sha256:abc", "").status, 501);
    // Deleting through the API is off by default (api.allow_delete).
    let resp = d.request("DELETE", "/api/delete", "{\"model\":\"tiny\"}");
    assert_eq!(resp.status, 403);
    assert!(resp.body.contains("vllamactl rm"), "{}", resp.body);
}

#[test]
fn cors_and_the_host_guard() {
    let d = daemon();
    let with = |extra: &str| {
        let raw = format!("GET /api/version HTTP/1.1\r\nConnection: close\r\n{extra}\r\n");
        parse_responses(&exchange(d.api, raw.as_bytes())).remove(0)
    };
    // Ollama's defaults and the configured pattern are let in and echoed.
    let r = with("Host: localhost:11434\r\nOrigin: http://localhost:3000\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        with("Host: 127.0.0.1\r\nOrigin: https://app.example.org\r\n").status,
        200
    );
    assert_eq!(
        with("Host: 127.0.0.1\r\nOrigin: tauri://localhost\r\n").status,
        200
    );
    // Others are refused.
    let r = with("Host: 127.0.0.1\r\nOrigin: http://evil.com\r\n");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("api.origins"));
    // Preflight.
    let raw = "OPTIONS /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nOrigin: http://localhost:5173\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n";
    let r = parse_responses(&exchange(d.api, raw.as_bytes())).remove(0);
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type")
    );
    // DNS rebinding: a foreign Host on a loopback listener.
    assert_eq!(with("Host: attacker.example:11434\r\n").status, 403);
    assert_eq!(with("Host: [::1]:11434\r\n").status, 200);
}

#[test]
fn engine_death_mid_stream_is_an_ndjson_error_line() {
    let d = daemon();
    let body = json!({"model": "fragile", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 10}});
    let resp = d.request("POST", "/api/chat", &body.to_string());
    assert_eq!(resp.status, 200);
    let objs = lines(&resp.body);
    let last = objs.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("stopped in the middle of the response"),
        "{objs:?}"
    );
    assert!(
        objs.len() >= 2,
        "the tokens before the crash were sent: {objs:?}"
    );
}

/// An event that is not a chunk (`data: {garbage`) ends the answer with the engine's
/// failure: the last NDJSON line when streamed (after the tokens before it), a 500 whole.
#[test]
fn an_engine_event_that_is_not_json_is_an_error_not_a_hang_or_a_panic() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake(),
            "garbled",
            &["env = { FAKE_VLLM_GARBAGE = \"1\" }"],
        ),
    );
    let body = json!({"model": "garbled", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 6}});
    let resp = d.request("POST", "/api/chat", &body.to_string());
    assert_eq!(resp.status, 200);
    let objs = lines(&resp.body);
    let error = objs
        .last()
        .and_then(|o| o["error"].as_str())
        .unwrap_or_default();
    assert!(error.contains("not an OpenAI chunk"), "{objs:?}");
    assert_eq!(objs.len(), 3, "two tokens, then the error: {objs:?}");
    let whole =
        json!({"model": "garbled", "prompt": "hi", "stream": false, "options": {"num_predict": 6}});
    let resp = d.request("POST", "/api/generate", &whole.to_string());
    assert_eq!(resp.status, 500, "{}", resp.body);
    assert!(resp.body.contains("not an OpenAI chunk"), "{}", resp.body);
}

#[test]
fn a_client_that_leaves_an_ollama_stream_aborts_the_engine_request() {
    let d = daemon();
    let warm = json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 1}, "stream": false});
    assert_eq!(
        d.request("POST", "/api/chat", &warm.to_string()).status,
        200
    );
    {
        let mut s = TcpStream::connect(d.api).unwrap();
        let body = json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 200}}).to_string();
        write!(
            s,
            "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    assert!(wait_until(Duration::from_secs(5), || d
        .log()
        .contains("client disconnected: request aborted")));
    assert!(wait_until(Duration::from_secs(2), || d
        .engine("slow:latest")
        .is_some_and(|e| e["pending"] == 0)));
}

#[test]
fn num_ctx_restarts_an_idle_engine_with_the_larger_context() {
    const CONFIG: &str = r#"{"model_type":"llama","architectures":["LlamaForCausalLM"],"max_position_embeddings":8192}"#;
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(&fake(), "ctx", &["max_model_len = 2048"])
            .model_file("ctx", "config.json", CONFIG),
    );
    let chat = |options: Value| {
        let body = json!({"model": "ctx", "messages": [{"role": "user", "content": "x"}], "stream": false, "options": options});
        d.request("POST", "/api/chat", &body.to_string())
    };
    let argv = || -> Vec<String> {
        serde_json::from_str(
            &std::fs::read_to_string(d.fake_state("ctx").join("argv.json")).unwrap(),
        )
        .unwrap()
    };
    let max_len = |argv: &[String]| {
        argv.windows(2)
            .find(|w| w[0] == "--max-model-len")
            .map(|w| w[1].clone())
    };
    assert_eq!(chat(json!({"num_predict": 1})).status, 200);
    assert_eq!(max_len(&argv()).as_deref(), Some("2048"));
    let first = d.engine("ctx:latest").unwrap()["pid"].clone();
    // Within what is running: no restart.
    assert_eq!(chat(json!({"num_predict": 1, "num_ctx": 1024})).status, 200);
    assert_eq!(d.engine("ctx:latest").unwrap()["pid"], first);
    // Larger, and the model allows it: restarted with it.
    assert_eq!(chat(json!({"num_predict": 1, "num_ctx": 4096})).status, 200);
    assert_eq!(max_len(&argv()).as_deref(), Some("4096"));
    assert_ne!(d.engine("ctx:latest").unwrap()["pid"], first);
    // Beyond the model's own context length: served as it is.
    let second = d.engine("ctx:latest").unwrap()["pid"].clone();
    assert_eq!(
        chat(json!({"num_predict": 1, "num_ctx": 100000})).status,
        200
    );
    assert_eq!(d.engine("ctx:latest").unwrap()["pid"], second);
    assert!(d
        .log()
        .contains("num_ctx is beyond the model's context length"));
}

#[test]
fn keep_alive_0_waits_for_requests_in_flight() {
    let d = daemon();
    let slow = json!({"model": "slow", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 20}, "stream": false});
    let busy = vllama_testkit::spawn_request(d.api, "/api/chat", slow.to_string());
    assert!(wait_until(Duration::from_secs(5), || d
        .engine("slow:latest")
        .is_some_and(|e| e["pending"] == 1)));
    let resp = d.request(
        "POST",
        "/api/generate",
        &json!({"model": "slow", "keep_alive": 0}).to_string(),
    );
    assert_eq!(resp.json()["done_reason"], "unload");
    // The request in flight is not cut off ...
    let answer = busy.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["eval_count"], 20);
    // ... and the model goes right after it.
    assert!(wait_until(Duration::from_secs(3), || d
        .engine("slow:latest")
        .is_none()));
}

#[test]
fn request_ids_reach_the_engine_the_logs_and_the_client() {
    let d = daemon();
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 2}}).to_string();
    let raw = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Request-Id: test-rid-42\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = parse_responses(&exchange(d.api, raw.as_bytes())).remove(0);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-request-id"), Some("test-rid-42"));
    let requests = std::fs::read_to_string(d.fake_state("tiny").join("requests.jsonl")).unwrap();
    let chat: Value = requests
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["path"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(chat["headers"]["x-request-id"], "test-rid-42");
    // Every line of the request carries the id: the engine start and the access line.
    let log = d.log_with_access();
    let tagged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request_id=test-rid-42"))
        .collect();
    assert!(
        tagged.iter().any(|l| l.contains("starting engine")),
        "{log}"
    );
    let access = tagged
        .iter()
        .find(|l| l.contains("vllamad::access"))
        .expect("access line");
    assert!(
        access.contains("status=200") && access.contains("model=tiny:latest"),
        "{access}"
    );
    // Each field once: the span's model is not recorded again at the lease, and the access
    // event does not repeat the span's method and path (journald would get two of each).
    for field in ["model=", "path=", "method="] {
        assert_eq!(access.matches(field).count(), 1, "{field} in {access}");
    }

    // Without one (or with a bad one), vllamad makes one; the OpenAI route passes it on too.
    let resp = d.request(
        "POST",
        "/v1/chat/completions",
        &vllama_testkit::chat_body("tiny", 1, false),
    );
    let made = resp.header("x-request-id").unwrap().to_string();
    assert!(made.starts_with("vl-"), "{made}");
    let requests = std::fs::read_to_string(d.fake_state("tiny").join("requests.jsonl")).unwrap();
    assert!(
        requests.contains(&format!("\"x-request-id\":\"{made}\"")),
        "{requests}"
    );
}

#[test]
fn ps_lists_loaded_models_only() {
    let d = daemon();
    let crash = json!({"model": "fragile", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 10}});
    d.request("POST", "/api/chat", &crash.to_string());
    assert!(wait_until(Duration::from_secs(5), || d
        .engine("fragile:latest")
        .is_some_and(|e| e["state"] == "failed")));
    let ok = json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 1}, "stream": false});
    assert_eq!(d.request("POST", "/api/chat", &ok.to_string()).status, 200);
    let listed: Vec<String> = d.get("/api/ps").json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        ["tiny:latest"],
        "a failed engine is not a loaded model"
    );
}
