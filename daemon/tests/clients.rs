//! The official client libraries (Python `ollama`, `openai` and `anthropic`) against vllamad with fake
//! engines: tests/clients/*.py, run with the Python that `tests/run` prepared
//! (`VLLAMA_CLIENTS_PYTHON`, a venv with tests/clients/requirements.txt). Without it the
//! test says it was skipped, unless `VLLAMA_REQUIRE_CLIENTS` is set (CI).

use std::process::Command;

use vllama_testkit::{workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

const LLAMA_CONFIG: &str = r#"{"model_type":"llama","architectures":["LlamaForCausalLM"],"max_position_embeddings":2048,"torch_dtype":"bfloat16"}"#;
/// A Hermes-style template (`<tool_call>`, as Qwen 2.5's): the family table gives it vLLM's
/// `hermes` tool parser, so the engine is started with the flags tools need.
const TOOLS_TEMPLATE: &str = r#"{"chat_template":"{% if tools %}<tools>{{ tools }}</tools>{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}<tool_call>"}"#;
const VISION_CONFIG: &str = r#"{"model_type":"qwen2_5_vl","architectures":["Qwen2_5_VLForConditionalGeneration"],"vision_config":{},"max_position_embeddings":4096}"#;
const EMBED_CONFIG: &str =
    r#"{"model_type":"bert","architectures":["BertModel"],"max_position_embeddings":512}"#;

#[test]
fn official_python_clients() {
    let Some(python) = std::env::var_os("VLLAMA_CLIENTS_PYTHON") else {
        assert!(
            std::env::var_os("VLLAMA_REQUIRE_CLIENTS").is_none(),
            "VLLAMA_REQUIRE_CLIENTS is set but VLLAMA_CLIENTS_PYTHON is not"
        );
        eprintln!("skipped: VLLAMA_CLIENTS_PYTHON not set (tests/run prepares it)");
        return;
    };
    let fake = workspace_bin(BIN, "fake-vllm");
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "max_loaded = 3")
            .set("engine", "responses_store = true")
            .fake_model(&fake, "tiny", &[])
            .model_file("tiny", "config.json", LLAMA_CONFIG)
            .model_file("tiny", "tokenizer_config.json", TOOLS_TEMPLATE)
            .fake_model(&fake, "vision", &[])
            .model_file("vision", "config.json", VISION_CONFIG)
            .fake_model(&fake, "embed", &[])
            .model_file("embed", "config.json", EMBED_CONFIG),
    );
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients");
    let out = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&tests)
        .env("VLLAMA_URL", format!("http://{}", d.api))
        .output()
        .expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "client tests failed:\n{report}\n--- vllamad log ---\n{}",
        d.log()
    );
}

#[test]
fn official_python_clients_with_api_keys() {
    let Some(python) = vllama_testkit::clients_python() else {
        eprintln!("skipped: VLLAMA_CLIENTS_PYTHON not set (tests/run prepares it)");
        return;
    };
    let fake = workspace_bin(BIN, "fake-vllm");
    // A chat model and two others, for the key limited to the chat model.
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .set("engine", "max_loaded = 3")
            .fake_model(&fake, "tiny", &[])
            .model_file("tiny", "config.json", LLAMA_CONFIG)
            .fake_model(&fake, "vision", &[])
            .fake_model(&fake, "embed", &[])
            .model_file("embed", "config.json", EMBED_CONFIG),
    );
    let key = |name: &str, models: &[&str]| {
        let body = serde_json::json!({"name": name, "models": models}).to_string();
        let r = d.admin("POST", "/v1/keys", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["key"].as_str().unwrap().to_string()
    };
    let (all, tiny) = (key("all", &[]), key("tiny-only", &["tiny"]));
    let r = d.admin(
        "POST",
        "/v1/keys",
        r#"{"name": "sixty", "limits": {"rpm": 60}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rpm: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let rpm = rpm["key"].as_str().unwrap().to_string();
    vllama_testkit::run_client_script(
        &python,
        "keys_check.py",
        &d,
        &[
            ("VLLAMA_KEY", &all),
            ("VLLAMA_KEY_TINY", &tiny),
            ("VLLAMA_KEY_RPM", &rpm),
        ],
    );
}
