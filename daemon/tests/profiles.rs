//! Engine profiles against the fake engine, which is as strict as vLLM 0.32 (tools need
//! `--enable-auto-tool-choice --tool-call-parser`, reasoning needs `--reasoning-parser`):
//! each family's argv, capabilities that tell the truth, refusals before any engine starts,
//! thinking, unknown parser names, and tool calls streamed as soon as they are complete.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};
use vllama_testkit::{workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

/// The real families' template markers, abridged.
const LLAMA3: &str = "{%- if tools %}{{ tools }}{% endif %}<|start_header_id|>{%- if m.tool_calls %}<|python_tag|>{% endif %}";
const HERMES: &str = "{%- if tools %}<tools>{{ tools }}</tools>{% endif %}<tool_call>\n{\"name\": ...}\n</tool_call>";
const QWEN3: &str = "{%- if tools %}<tools></tools>{% endif %}<tool_call></tool_call>{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{% endif %}";
const MISTRAL: &str =
    "{%- if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]";
const R1: &str = "{{ bos }}<｜User｜>{{ m }}<｜Assistant｜><think>\n";
const PLAIN: &str = "{% for m in messages %}{{ m.content }}{% endfor %}";

fn template(t: &str) -> String {
    json!({ "chat_template": t }).to_string()
}

fn model(
    o: DaemonOptions,
    name: &str,
    model_type: &str,
    tpl: &str,
    lines: &[&str],
) -> DaemonOptions {
    o.fake_model(&fake(), name, lines)
        .model_file(
            name,
            "config.json",
            &json!({"model_type": model_type, "architectures": ["LlamaForCausalLM"]}).to_string(),
        )
        .model_file(name, "tokenizer_config.json", &template(tpl))
}

fn argv(d: &Daemon, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(d.fake_state(name).join("argv.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

fn flag(args: &[String], f: &str) -> Option<String> {
    args.iter()
        .position(|a| a == f)
        .and_then(|i| args.get(i + 1).cloned())
}

fn chat(d: &Daemon, body: Value) -> vllama_testkit::Response {
    d.request("POST", "/api/chat", &body.to_string())
}

fn weather() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[test]
fn each_family_starts_with_the_flags_it_needs() {
    let o = DaemonOptions::default();
    let o = model(o, "llama", "llama", LLAMA3, &[]);
    let o = model(o, "hermes", "qwen2", HERMES, &[]);
    let o = model(o, "qwen3", "qwen3", QWEN3, &[]);
    let o = model(o, "mistral", "mistral", MISTRAL, &[]);
    let o = model(o, "r1", "qwen2", R1, &[]);
    let o = model(o, "oss", "gpt_oss", PLAIN, &[]);
    let o = model(o, "plain", "llama", PLAIN, &[]);
    let o = model(
        o,
        "custom",
        "llama",
        PLAIN,
        &[
            "tool_parser = \"pythonic\"",
            "args = [\"--max-num-seqs\", \"4\"]",
        ],
    );
    let o = model(o, "off", "qwen3", QWEN3, &["tool_parser = \"none\""]);
    let d = Daemon::start(BIN, o.set("engine", "max_loaded = 20"));
    let expect: &[(&str, Option<&str>, Option<&str>)] = &[
        ("llama", Some("llama3_json"), None),
        ("hermes", Some("hermes"), None),
        ("qwen3", Some("hermes"), Some("qwen3")),
        ("mistral", Some("mistral"), None),
        ("r1", None, Some("deepseek_r1")),
        ("oss", Some("openai"), Some("openai_gptoss")),
        ("plain", None, None),
        ("custom", Some("pythonic"), None),
        ("off", None, Some("qwen3")),
    ];
    for (name, tool, reasoning) in expect {
        let out = d.admin("POST", "/v1/preload", &json!({"model": name}).to_string());
        assert!(out.body.contains("\"ready\""), "{name}: {}", out.body);
        let args = argv(&d, name);
        assert_eq!(
            flag(&args, "--tool-call-parser").as_deref(),
            *tool,
            "{name}: {args:?}"
        );
        assert_eq!(
            flag(&args, "--reasoning-parser").as_deref(),
            *reasoning,
            "{name}: {args:?}"
        );
        assert_eq!(
            args.iter().any(|a| a == "--enable-auto-tool-choice"),
            tool.is_some(),
            "{name}: {args:?}"
        );
    }
    // The log says what was chosen and why.
    assert!(
        d.log().contains(
            "family qwen3; tool parser hermes (from the family table); reasoning parser qwen3"
        ),
        "{}",
        d.log()
    );
    assert!(d
        .log()
        .contains("tool parser pythonic (from the configuration)"));
}

#[test]
fn capabilities_tell_the_truth_and_requests_needing_more_are_refused_before_a_start() {
    let o = model(DaemonOptions::default(), "hermes", "qwen2", HERMES, &[]);
    let o = model(
        o,
        "plain",
        "llama",
        "{% if tools %}tools: {{ tools }}{% endif %}{{ m }}",
        &[],
    );
    let d = Daemon::start(BIN, o);
    let caps = |name: &str| {
        d.request("POST", "/api/show", &json!({"model": name}).to_string())
            .json()["capabilities"]
            .clone()
    };
    assert_eq!(caps("hermes"), json!(["completion", "tools"]));
    assert_eq!(
        caps("plain"),
        json!(["completion"]),
        "a template that mentions tools but has no call syntax"
    );
    let tags = d.get("/api/tags").json();
    let listed: Vec<Value> = tags["models"].as_array().cloned().unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|m| m["name"] == "hermes:latest"
                && m["capabilities"] == json!(["completion", "tools"])),
        "{tags}"
    );
    let models = d.get("/v1/models").json();
    assert!(
        models["data"].as_array().is_some_and(|l| l
            .iter()
            .any(|m| m["id"] == "plain:latest" && m["capabilities"] == json!(["completion"]))),
        "{models}"
    );

    let resp = chat(
        &d,
        json!({"model": "plain", "messages": [{"role": "user", "content": "hi"}], "tools": weather(), "stream": false}),
    );
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("plain does not support tools"),
        "{}",
        resp.body
    );
    let resp = chat(
        &d,
        json!({"model": "hermes", "messages": [{"role": "user", "content": "hi"}], "think": true, "stream": false}),
    );
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"], "\"hermes\" does not support thinking");
    let resp = d.request(
        "POST",
        "/api/generate",
        &json!({"model": "plain", "prompt": "hi", "think": "high"}).to_string(),
    );
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(
        d.engines().is_empty(),
        "nothing was started: {:?}",
        d.engines()
    );

    // With its parser, a tool call comes back as Ollama's objects; think: false is fine anywhere.
    let resp = chat(
        &d,
        json!({"model": "hermes", "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": weather(), "think": false, "stream": false}),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        resp.json()["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
}

#[test]
fn thinking_on_a_qwen3_style_model() {
    let d = Daemon::start(
        BIN,
        model(DaemonOptions::default(), "q3", "qwen3", QWEN3, &[]),
    );
    let on = chat(
        &d,
        json!({"model": "q3", "messages": [{"role": "user", "content": "hi"}], "think": true, "stream": false}),
    );
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(on.json()["message"]["thinking"], "Let me think about it.");
    let off = chat(
        &d,
        json!({"model": "q3", "messages": [{"role": "user", "content": "hi"}], "think": false, "stream": false}),
    );
    assert!(
        off.json()["message"].get("thinking").is_none(),
        "{}",
        off.body
    );
    let sent =
        std::fs::read_to_string(d.fake_state("q3").join("requests.jsonl")).unwrap_or_default();
    assert!(sent.contains("\"enable_thinking\":false"), "{sent}");
    // Streamed: the reasoning arrives as `thinking` pieces before the content.
    let s = chat(
        &d,
        json!({"model": "q3", "messages": [{"role": "user", "content": "hi"}], "think": true, "options": {"num_predict": 3}}),
    );
    let lines: Vec<Value> = s
        .body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let thought: String = lines
        .iter()
        .filter_map(|l| l["message"]["thinking"].as_str())
        .collect();
    assert_eq!(thought, "Let me think about it.", "{}", s.body);
}

#[test]
fn tool_calls_stream_as_soon_as_each_is_complete() {
    let d = Daemon::start(
        BIN,
        model(
            DaemonOptions::default(),
            "h",
            "qwen2",
            HERMES,
            &["env = { FAKE_VLLM_TOKEN_MS = \"2\" }"],
        ),
    );
    let s = chat(
        &d,
        json!({"model": "h", "messages": [{"role": "user", "content": "weather?"}], "tools": weather()}),
    );
    assert_eq!(s.status, 200, "{}", s.body);
    let lines: Vec<Value> = s
        .body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let with_call: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"]["tool_calls"].is_array())
        .collect();
    assert_eq!(with_call.len(), 1, "the call once: {}", s.body);
    assert_eq!(
        with_call[0]["done"], false,
        "before the done line: {}",
        s.body
    );
    assert_eq!(
        with_call[0]["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(lines.last().map(|l| l["done"].clone()), Some(json!(true)));
}

#[test]
fn a_parser_the_installed_vllm_does_not_know_is_refused_with_the_choices() {
    let home = tempfile::tempdir().expect("tempdir");
    let program = home.path().join("venv/bin/vllm");
    let python = workspace_bin(BIN, "fake-python");
    let o = DaemonOptions::default()
        .fake_model(&program, "t", &["tool_parser = \"herms\""])
        .model_file("t", "config.json", r#"{"model_type":"llama"}"#)
        .set("engine", &format!("python = \"{}\"", python.display()));
    let d = Daemon::start(BIN, o);
    let out = Command::new(workspace_bin(BIN, "vllamactl"))
        .arg("--socket")
        .arg(&d.admin)
        .args(["engine", "install", "--cpu"])
        .output()
        .expect("vllamactl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record =
        std::fs::read_to_string(home.path().join("venv/vllama-engine.json")).expect("record");
    assert!(
        record.contains("\"tool_parsers\"") && record.contains("llama3_json"),
        "{record}"
    );
    let resp = chat(
        &d,
        json!({"model": "t", "messages": [{"role": "user", "content": "hi"}], "stream": false}),
    );
    assert_eq!(resp.status, 500, "{}", resp.body);
    let error = resp.json()["error"].as_str().unwrap_or("").to_string();
    assert!(
        error.contains(
            "the tool parser `herms` (from the configuration) is not one vLLM 0.32.0+fake knows"
        ),
        "{error}"
    );
    assert!(error.contains("hermes, llama3_json"), "{error}");
    assert!(d.engines().is_empty(), "not started: {:?}", d.engines());
}
