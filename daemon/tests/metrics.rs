//! `GET /metrics` against the real daemon and the fake engine: counters that move with
//! requests, engine starts, crashes and reloads; the engines' own metrics with a `model`
//! label; a stuck engine exporter that cannot delay the scrape; the exposition checked by
//! Prometheus's own `promtool` where it is installed (CI installs it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use vllama_testkit::{
    chat_body, free_port, promtool_check, wait_until, workspace_bin, Daemon, DaemonOptions,
};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn fake() -> PathBuf {
    workspace_bin(BIN, "fake-vllm")
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(d: &Daemon) -> String {
    let resp = d.get("/metrics");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    resp.body
}

#[test]
fn counters_move_with_requests_engines_and_reloads() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(&fake(), "tiny", &[])
            .fake_model(
                &fake(),
                "fragile",
                &["env = { FAKE_VLLM_EXIT_AFTER = \"1\" }"],
            )
            .set("engine", "max_loaded = 3"),
    );
    let before = scrape(&d);
    assert_eq!(
        sample(&before, "vllama_build_info{version=\"0.1.0\"}"),
        Some(1.0),
        "{before}"
    );
    assert!(!before.contains("vllm_"), "no engines yet: {before}");

    // An Ollama stream: request, first token, tokens.
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 5}});
    assert_eq!(
        d.request("POST", "/api/chat", &body.to_string()).status,
        200
    );
    // OpenAI pass-throughs: streamed (with usage asked for), and not; their token counts come
    // from the engine's usage objects.
    let streamed = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}});
    assert_eq!(
        d.request("POST", "/v1/chat/completions", &streamed.to_string())
            .status,
        200
    );
    assert_eq!(
        d.request(
            "POST",
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "hi", "max_tokens": 4}).to_string()
        )
        .status,
        200
    );
    // An unknown model: counted, without a model label.
    assert_eq!(
        d.request(
            "POST",
            "/api/chat",
            &json!({"model": "nope", "messages": []}).to_string()
        )
        .status,
        404
    );

    let text = scrape(&d);
    let m = "model=\"tiny:latest\"";
    assert_eq!(
        sample(
            &text,
            &format!("vllama_requests_total{{{m},route=\"/api/chat\",status=\"200\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("vllama_requests_total{{{m},route=\"/v1/chat/completions\",status=\"200\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "vllama_requests_total{model=\"\",route=\"/api/chat\",status=\"404\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("vllama_time_to_first_token_seconds_count{{{m},route=\"/api/chat\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "vllama_time_to_first_token_seconds_count{{{m},route=\"/v1/chat/completions\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("vllama_generated_tokens_total{{{m}}}")),
        Some(5.0 + 3.0 + 4.0),
        "{text}"
    );
    // The fake engine counts 5 prompt tokens a message and a prompt's words + 1.
    assert_eq!(
        sample(&text, &format!("vllama_prompt_tokens_total{{{m}}}")),
        Some(5.0 + 5.0 + 2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("vllama_engine_starts_total{{{m}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("vllama_engine_load_duration_seconds_count{{{m}}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("vllama_engine_state{{{m},state=\"ready\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("vllama_engine_state{{{m},state=\"starting\"}}")
        ),
        Some(0.0)
    );
    // The engine's own metrics, renamed and labelled.
    assert!(
        text.contains(&format!("vllm_num_requests_running{{{m},engine=\"0\"")),
        "{text}"
    );
    assert!(!text.contains("vllm:"), "{text}");
    assert!(
        text.contains(&format!("vllm_generation_tokens_total{{{m},")),
        "{text}"
    );
    if let Some(Err(report)) = promtool_check(&text) {
        panic!("promtool: {report}\n{text}");
    }

    // A crash (the fake exits after one completion) counts, and the engine metrics of a
    // failed engine are not fetched.
    assert_eq!(
        d.request(
            "POST",
            "/v1/chat/completions",
            &chat_body("fragile", 2, false)
        )
        .status,
        200
    );
    let fm = "model=\"fragile:latest\"";
    assert!(
        wait_until(Duration::from_secs(10), || {
            sample(&scrape(&d), &format!("vllama_engine_crashes_total{{{fm}}}")) == Some(1.0)
        }),
        "{}",
        scrape(&d)
    );
    let text = scrape(&d);
    assert_eq!(
        sample(
            &text,
            &format!("vllama_engine_state{{{fm},state=\"failed\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains(&format!("vllm_num_requests_running{{{fm}")),
        "{text}"
    );

    // Reloads: one applied, one refused.
    assert_eq!(d.admin("POST", "/v1/reload", "").status, 200);
    std::fs::write(&d.config_path, "[api]\nnot_a_key = 1\n").unwrap();
    assert_eq!(d.admin("POST", "/v1/reload", "").status, 422);
    let text = scrape(&d);
    assert_eq!(
        sample(&text, "vllama_config_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "vllama_config_reloads_total{result=\"failed\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
}

#[test]
fn a_stuck_engine_exporter_cannot_stall_the_scrape() {
    let d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .fake_model(
                &fake(),
                "stuck",
                &["env = { FAKE_VLLM_METRICS_MS = \"30000\" }"],
            )
            .fake_model(&fake(), "tiny", &[])
            .set("engine", "max_loaded = 3")
            .set("metrics", "engine_timeout = \"300ms\""),
    );
    for model in ["stuck", "tiny"] {
        assert_eq!(
            d.request("POST", "/v1/chat/completions", &chat_body(model, 1, false))
                .status,
            200
        );
    }
    let t = Instant::now();
    let text = scrape(&d);
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "scrape took {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "the stuck engine was not asked: {took:?}"
    );
    // The healthy engine's metrics are there, the stuck one's left out.
    assert!(
        text.contains("vllm_num_requests_running{model=\"tiny:latest\""),
        "{text}"
    );
    assert!(
        !text.contains("vllm_num_requests_running{model=\"stuck:latest\""),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "vllama_engine_state{model=\"stuck:latest\",state=\"ready\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn metrics_can_move_to_their_own_listener_or_be_switched_off() {
    let port = free_port();
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().set("metrics", &format!("listen = \"127.0.0.1:{port}\"")),
    );
    assert_eq!(
        d.get("/metrics").status,
        404,
        "not on the API listener any more"
    );
    let raw = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let resp = vllama_testkit::parse_responses(&vllama_testkit::exchange(
        format!("127.0.0.1:{port}").parse().unwrap(),
        raw.as_bytes(),
    ))
    .remove(0);
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("vllama_uptime_seconds"), "{}", resp.body);
    // Its own listener is listed in the status.
    let status = d.admin("GET", "/v1/status", "").json();
    assert!(
        status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "metrics"),
        "{status}"
    );

    let off = Daemon::start(
        BIN,
        DaemonOptions::default().set("metrics", "enabled = false"),
    );
    assert_eq!(off.get("/metrics").status, 404);
}

/// The shipped alert rules and Grafana dashboard: valid PromQL (promtool), naming only
/// series that vllamad exposes (a renamed metric would leave a dashboard silently empty).
#[test]
fn shipped_alerts_and_dashboard_use_real_series() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let alerts =
        std::fs::read_to_string(root.join("packaging/prometheus/vllama-alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("packaging/grafana/vllama-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
        })
        .collect();
    exprs.extend(
        alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_string),
    );
    assert!(exprs.len() > 15, "{exprs:?}");

    // Series names: vllamad's as its source defines them (a family appears in a scrape only
    // once it has a sample), the engines' as a scrape with the fake engine shows them.
    let d = Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(&fake(), "tiny", &[]),
    );
    assert_eq!(
        d.request("POST", "/v1/chat/completions", &chat_body("tiny", 1, false))
            .status,
        200
    );
    let scraped = scrape(&d);
    let source = std::fs::read_to_string(root.join("daemon/src/metrics/mod.rs")).unwrap();
    let known = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if name.starts_with("vllm_") {
            scraped.contains(&format!("# TYPE {name} "))
        } else {
            source.contains(&format!("\"{base}\""))
        }
    };
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("vllama_") || w.starts_with("vllm_"))
        {
            assert!(
                known(name),
                "{name} (in `{expr}`) is not exposed:\n{scraped}"
            );
        }
    }

    // PromQL syntax, by promtool: the alert file as it is, the dashboard's queries as rules.
    let dir = tempfile::tempdir().unwrap();
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: dashboard:q{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let bin = std::env::var("VLLAMA_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    for f in [file, root.join("packaging/prometheus/vllama-alerts.yml")] {
        match std::process::Command::new(&bin)
            .args(["check", "rules"])
            .arg(&f)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "{}: {}{}",
                f.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => assert!(
                std::env::var_os("VLLAMA_REQUIRE_PROMTOOL").is_none(),
                "promtool required: {e}"
            ),
        }
    }
}
