//! `vllamactl bench` against the real daemon and the fake engine: both APIs, streamed and
//! whole, the counts it reports, and errors by kind.

use std::process::Command;

use serde_json::Value;
use vllama_testkit::{workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn bench(d: &Daemon, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(workspace_bin(BIN, "vllamactl"))
        .args(["bench", "--url", &format!("http://{}", d.api), "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code(), json, format!("{stdout}{stderr}"))
}

#[test]
fn bench_measures_both_apis_and_counts_errors() {
    let fake = workspace_bin(BIN, "fake-vllm");
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(
            &fake,
            "tiny",
            &["env = { FAKE_VLLM_TOKEN_MS = \"5\" }"],
        ),
    );
    for api in ["ollama", "openai"] {
        let (code, r, out) = bench(
            &d,
            &[
                "--api",
                api,
                "-m",
                "tiny",
                "-c",
                "1,4",
                "-n",
                "12",
                "--max-tokens",
                "6",
            ],
        );
        assert_eq!(code, Some(0), "{out}");
        let levels = r["levels"].as_array().unwrap();
        assert_eq!(levels.len(), 2);
        for (l, c) in levels.iter().zip([1, 4]) {
            assert_eq!(l["concurrency"], c);
            assert_eq!(l["ok"], 12, "{l}");
            assert_eq!(l["output_tokens"], 72, "{api}: 12 × 6 tokens: {l}");
            let ttft = l["ttft_ms"]["p50"].as_f64().unwrap();
            let p50 = l["latency_ms"]["p50"].as_f64().unwrap();
            // Six tokens 5 ms apart: the first arrives well before the last.
            assert!(
                ttft > 0.0 && ttft < p50,
                "{api}: ttft {ttft} vs latency {p50}"
            );
            assert!(p50 >= 25.0, "{api}: {p50} ms for 6 tokens at 5 ms");
        }
    }
    // Whole answers: no time to first token, tokens from the usage figures.
    let (code, r, out) = bench(
        &d,
        &[
            "--api",
            "openai",
            "-m",
            "tiny",
            "-n",
            "5",
            "--max-tokens",
            "3",
            "--no-stream",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(r["levels"][0]["output_tokens"], 15);
    assert!(r["levels"][0]["ttft_ms"].is_null());

    // A model the server does not have: every request an error of one kind, exit 1.
    let (code, r, out) = bench(&d, &["-m", "nope", "-n", "3", "--warmup", "0"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(r["levels"][0]["errors"]["HTTP 404"], 3, "{r}");
    // Nothing listening: connection errors.
    let out = Command::new(workspace_bin(BIN, "vllamactl"))
        .args([
            "bench",
            "--url",
            "http://127.0.0.1:9",
            "-m",
            "tiny",
            "-n",
            "2",
            "--warmup",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 × connect"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
