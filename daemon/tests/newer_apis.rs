//! The API surface clients use now, against the real daemon and the fake engine: Anthropic
//! Messages and count_tokens, OpenAI Responses (and stored responses), tokenize, and the
//! Ollama fields (logprobs, truncate, the global context length). Official client libraries
//! drive the same routes in tests/clients/; the real engine in real_engine_apis.rs.

use std::path::PathBuf;

use serde_json::{json, Value};
use vllama_testkit::{exchange, parse_responses, workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

fn daemon(store: bool) -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(&fake(), "tiny", &[])
            .fake_model(
                &fake(),
                "fragile",
                &["env = { FAKE_VLLM_CRASH_MID_STREAM = \"1\" }"],
            )
            .set("engine", "max_loaded = 2")
            .set("engine", &format!("responses_store = {store}")),
    )
}

use vllama_testkit::sse_named as sse;

/// The requests the fake engine of `model` received on `path`.
fn engine_requests(d: &Daemon, model: &str, path: &str) -> Vec<Value> {
    std::fs::read_to_string(d.fake_state(model).join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["path"] == path)
        .collect()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn anthropic_messages_whole_streamed_and_counted() {
    let d = daemon(false);
    let body = json!({"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]});
    let raw = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nx-api-key: sk-ant-test\r\n\
         anthropic-version: 2023-06-01\r\nanthropic-beta: tools-2024-04-04\r\nX-Request-Id: rid-msg-1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.to_string().len()
    );
    let resp = parse_responses(&exchange(d.api, raw.as_bytes())).remove(0);
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, d.log());
    let m = resp.json();
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"][0]["type"], "text");
    assert_eq!(m["content"][0]["text"], " the llama serves");
    assert_eq!(m["stop_reason"], "max_tokens");
    assert_eq!(m["usage"], json!({"input_tokens": 5, "output_tokens": 3}));
    assert_eq!(resp.header("x-request-id"), Some("rid-msg-1"));
    // The engine got its served name, the request id and Anthropic's headers.
    let sent = engine_requests(&d, "tiny", "/v1/messages");
    assert_eq!(sent[0]["body"]["model"], "tiny:latest");
    assert_eq!(sent[0]["headers"]["x-request-id"], "rid-msg-1");
    assert_eq!(sent[0]["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(sent[0]["headers"]["anthropic-beta"], "tools-2024-04-04");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = d.request("POST", "/v1/messages", &streamed.to_string());
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse(&resp.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }

    let count = d.request(
        "POST",
        "/v1/messages/count_tokens",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}).to_string(),
    );
    assert_eq!(count.status, 200);
    assert_eq!(count.json()["input_tokens"], 5);

    // Counted under their own route labels, with their tokens.
    let text = d.get("/metrics").body;
    let m = "model=\"tiny:latest\"";
    for route in ["/v1/messages", "/v1/messages/count_tokens"] {
        assert_eq!(
            metric(
                &text,
                &format!("vllama_requests_total{{{m},route=\"{route}\",status=\"200\"}}")
            ),
            Some(if route == "/v1/messages" { 2.0 } else { 1.0 }),
            "{route}: {text}"
        );
    }
    assert_eq!(
        metric(&text, &format!("vllama_generated_tokens_total{{{m}}}")),
        Some(6.0),
        "{text}"
    );
}

#[test]
fn anthropic_errors_are_anthropic_shaped_and_start_nothing() {
    let d = daemon(false);
    let unknown = d.request(
        "POST",
        "/v1/messages",
        &json!({"model": "nobody", "max_tokens": 3, "messages": []}).to_string(),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let v = unknown.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nobody"),
        "{v}"
    );
    for bad in ["{", "[1]", "{\"max_tokens\": 3}", "{\"model\": 7}"] {
        let r = d.request("POST", "/v1/messages", bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{bad}");
    }
    assert!(
        d.engines().is_empty(),
        "no engine started: {:?}",
        d.engines()
    );

    // The engine's own refusals come back in Anthropic's shape too (vLLM answers
    // validation errors in OpenAI's, and names its types its own way).
    let r = d.request(
        "POST",
        "/v1/messages",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}]}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        r.body
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));

    // An engine that dies mid-stream: the stream ends with Anthropic's error event.
    let r = d.request(
        "POST",
        "/v1/messages",
        &json!({"model": "fragile", "max_tokens": 8, "stream": true,
            "messages": [{"role": "user", "content": "x"}]})
        .to_string(),
    );
    let events = sse(&r.body);
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "error", "{}", r.body);
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
}

#[test]
fn responses_whole_streamed_and_stored() {
    let d = daemon(true);
    let body = json!({"model": "tiny", "input": "hello", "max_output_tokens": 3});
    let resp = d.request("POST", "/v1/responses", &body.to_string());
    assert_eq!(resp.status, 200, "{}", resp.body);
    let r = resp.json();
    assert_eq!(r["object"], "response");
    assert_eq!(r["output"][0]["content"][0]["text"], " the llama serves");
    let id = r["id"].as_str().unwrap().to_string();

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = d.request("POST", "/v1/responses", &streamed.to_string());
    let events = sse(&resp.body);
    assert_eq!(events.first().unwrap().0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    let streamed_id = events[0].1["response"]["id"].as_str().unwrap().to_string();

    // Kept by the engine that made them, found by id alone.
    for id in [&id, &streamed_id] {
        let got = d.get(&format!("/v1/responses/{id}"));
        assert_eq!(got.status, 200, "{id}: {}", got.body);
        assert_eq!(got.json()["id"], id.as_str());
    }
    let cancel = d.request("POST", &format!("/v1/responses/{id}/cancel"), "");
    assert_eq!(cancel.status, 400);
    assert!(cancel.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Cannot cancel a synchronous response"));
    let unknown = d.get("/v1/responses/resp_nobody");
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"]["message"].is_string());
    let text = d.get("/metrics").body;
    assert!(
        text.contains("route=\"/v1/responses/{id}\""),
        "bounded label: {text}"
    );

    // The engine stopped: its responses are gone, and nothing is started to look.
    assert_eq!(
        d.admin("POST", "/v1/unload", "{\"model\":\"tiny\"}").status,
        200
    );
    let gone = d.get(&format!("/v1/responses/{id}"));
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(gone.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stopped"));
    assert!(d
        .engine("tiny:latest")
        .is_none_or(|e| e["phase"] != "ready"));
}

#[test]
fn responses_errors_are_openai_shaped_and_stateless_works() {
    let d = daemon(false);
    let unknown = d.request(
        "POST",
        "/v1/responses",
        &json!({"model": "nobody", "input": "x"}).to_string(),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "not_found_error");
    assert!(unknown.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nobody"));
    let bad = d.request("POST", "/v1/responses", "{\"input\": 3}");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].is_string());
    assert!(d.engines().is_empty());

    let ok = d.request(
        "POST",
        "/v1/responses",
        &json!({"model": "tiny", "input": "x", "max_output_tokens": 2}).to_string(),
    );
    assert_eq!(ok.status, 200);
    let id = ok.json()["id"].as_str().unwrap().to_string();
    // Not kept: the engine was started without the store, and the answer says how to turn it on.
    let got = d.get(&format!("/v1/responses/{id}"));
    assert_eq!(got.status, 404);
    assert!(got.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("responses_store"));
    let env: Value = serde_json::from_str(
        &std::fs::read_to_string(d.fake_state("tiny").join("env.json")).unwrap(),
    )
    .unwrap();
    assert!(env.get("VLLM_ENABLE_RESPONSES_API_STORE").is_none());

    // tokenize and detokenize, with the model resolved like the rest.
    let t = d.request(
        "POST",
        "/tokenize",
        &json!({"model": "tiny", "prompt": "the llama"}).to_string(),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.json()["count"], 2);
    let back = d.request(
        "POST",
        "/detokenize",
        &json!({"model": "tiny", "tokens": t.json()["tokens"]}).to_string(),
    );
    assert_eq!(back.status, 200);
    assert!(back.json()["prompt"].is_string());
    assert_eq!(
        engine_requests(&d, "tiny", "/tokenize")[0]["body"]["model"],
        "tiny:latest"
    );
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn ollama_logprobs_whole_and_streamed() {
    let d = daemon(false);
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "logprobs": true, "top_logprobs": 2, "stream": false, "options": {"num_predict": 3}});
    let r = d.request("POST", "/api/chat", &chat.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let lp = r.json()["logprobs"].clone();
    assert_eq!(lp.as_array().map(Vec::len), Some(3), "{lp}");
    assert_eq!(lp[0]["token"], " the");
    assert!(lp[0]["logprob"].as_f64().unwrap() < 0.0);
    assert_eq!(lp[0]["top_logprobs"].as_array().map(Vec::len), Some(2));
    assert_eq!(lp[0]["bytes"], json!(" the".as_bytes()));
    let sent = engine_requests(&d, "tiny", "/v1/chat/completions");
    assert_eq!(sent[0]["body"]["logprobs"], true);
    assert_eq!(sent[0]["body"]["top_logprobs"], 2);

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let lines = ndjson(&d.request("POST", "/api/chat", &streamed.to_string()).body);
    let tokens: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["logprobs"].as_array())
        .flatten()
        .collect();
    assert_eq!(tokens.len(), 3, "{lines:?}");
    // Each piece carries its own token's log probability.
    for l in lines.iter().filter(|l| l["done"] == false) {
        assert_eq!(l["logprobs"][0]["token"], l["message"]["content"], "{l}");
    }

    // generate, and raw generate on the completions API.
    for raw in [false, true] {
        let g = json!({"model": "tiny", "prompt": "the llama", "raw": raw, "stream": false,
            "logprobs": true, "top_logprobs": 1, "options": {"num_predict": 2}});
        let r = d.request("POST", "/api/generate", &g.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json()["logprobs"].as_array().map(Vec::len),
            Some(2),
            "raw {raw}: {}",
            r.body
        );
        assert_eq!(r.json()["logprobs"][1]["token"], " llama");
    }

    // Without logprobs: none asked of the engine, none answered.
    let plain = d.request(
        "POST",
        "/api/chat",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": false})
            .to_string(),
    );
    assert!(plain.json().get("logprobs").is_none());
    let bad = d.request(
        "POST",
        "/api/chat",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}).to_string(),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("top_logprobs"));
}

#[test]
fn truncate_cuts_the_front_or_says_by_how_much() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(&fake(), "tiny", &["max_model_len = 64"]),
    );
    let long = vec!["word"; 100].join(" ");
    let chat = |truncate: Option<bool>| {
        let mut c = json!({"model": "tiny", "stream": false, "options": {"num_predict": 8},
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": long}]});
        if let Some(t) = truncate {
            c["truncate"] = json!(t);
        }
        c.to_string()
    };
    // Default: cut from the front to the context less the answer's room, as Ollama does.
    let r = d.request("POST", "/api/chat", &chat(None));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["prompt_eval_count"], 64 - 8);
    let sent = engine_requests(&d, "tiny", "/v1/chat/completions");
    assert_eq!(sent.last().unwrap()["body"]["truncate_prompt_tokens"], 56);

    let r = d.request("POST", "/api/chat", &chat(Some(false)));
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    // 5 (system) + 101 (user) tokens against 64.
    assert!(
        msg.contains("the prompt is 106 tokens, 42 over the context length of 64"),
        "{msg}"
    );

    let r = d.request(
        "POST",
        "/api/generate",
        &json!({"model": "tiny", "prompt": long, "stream": false, "shift": false}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let bad = d.request(
        "POST",
        "/api/generate",
        &json!({"model": "tiny", "prompt": "x", "truncate": "yes"}).to_string(),
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn a_global_context_length_for_models_without_one() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(&fake(), "tiny", &[])
            .fake_model(&fake(), "own", &["max_model_len = 1024"])
            .model_file(
                "tiny",
                "config.json",
                r#"{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096}"#,
            )
            .set("engine", "context_length = 8192")
            .set("engine", "max_loaded = 2"),
    );
    for model in ["tiny", "own"] {
        let r = d.request(
            "POST",
            "/api/generate",
            &json!({"model": model, "prompt": "x", "stream": false, "options": {"num_predict": 1}})
                .to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let argv = |model: &str| -> Vec<String> {
        serde_json::from_str(
            &std::fs::read_to_string(d.fake_state(model).join("argv.json")).unwrap(),
        )
        .unwrap()
    };
    let len = |args: Vec<String>| {
        args.iter()
            .position(|a| a == "--max-model-len")
            .map(|i| args[i + 1].clone())
    };
    // Capped at the model's own 4096; a model's max_model_len wins.
    assert_eq!(len(argv("tiny")).as_deref(), Some("4096"));
    assert_eq!(len(argv("own")).as_deref(), Some("1024"));
}

#[test]
fn ollamas_environment_names_are_honoured() {
    let mut options = DaemonOptions::default().fake_model(&fake(), "tiny", &[]);
    options.env.push(("OLLAMA_KEEP_ALIVE".into(), "-1".into()));
    options.env.push(("OLLAMA_MAX_QUEUE".into(), "7".into()));
    let d = Daemon::start(BIN, options);
    let log = d.log();
    assert!(
        log.contains("OLLAMA_KEEP_ALIVE=-1 is read as engine.keep_alive"),
        "{log}"
    );
    let r = d.request(
        "POST",
        "/api/generate",
        &json!({"model": "tiny", "prompt": "x", "stream": false, "options": {"num_predict": 1}})
            .to_string(),
    );
    assert_eq!(r.status, 200);
    let ps = d.get("/api/ps").json();
    // Kept forever: Ollama's far-future expiry.
    assert!(
        ps["models"][0]["expires_at"]
            .as_str()
            .unwrap()
            .starts_with("9999"),
        "{ps}"
    );
}
