//! Several vllamad nodes behind the HAProxy recipe of docs/SCALING.md, run as it is written
//! there: two nodes with the fake engine, each able to serve both models; after a warm-up
//! every request of a model lands on its one node and starts nothing; with that node killed,
//! its model fails over to the other node (one cold start there) once the `/health` check
//! has seen it gone. The HAProxy binary comes from Debian's package, which `tests/run`
//! unpacks (`VLLAMA_HAPROXY`, its libraries in `VLLAMA_HAPROXY_LIBS`); without it the test
//! says it was skipped, unless `VLLAMA_REQUIRE_PROXIES` is set (CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vllama_testkit::{
    chat_body, exchange_within, free_port, parse_responses, wait_until, workspace_bin, Daemon,
    DaemonOptions,
};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");
const MODELS: [&str; 2] = ["alpha", "gamma"];

/// The fenced block after `<!-- recipe: haproxy -->` in docs/SCALING.md.
fn recipe() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SCALING.md"))
            .unwrap();
    let marker = "<!-- recipe: haproxy -->";
    let after = &doc[doc.find(marker).expect("no recipe") + marker.len()..];
    let body = &after[after.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

fn node() -> Daemon {
    let mut options = DaemonOptions::default();
    for model in MODELS {
        options = options.fake_model(
            &workspace_bin(BIN, "fake-vllm"),
            model,
            &["env = { FAKE_VLLM_STARTUP_MS = \"300\", FAKE_VLLM_TOKEN_MS = \"1\" }"],
        );
    }
    Daemon::start(BIN, options)
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many chat requests `model`'s engine on node `d` has seen.
fn served(d: &Daemon, model: &str) -> usize {
    std::fs::read_to_string(d.fake_state(model).join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"/v1/chat/completions\""))
        .count()
}

fn chat(port: u16, model: &str) -> (u16, Duration) {
    let body = chat_body(model, 2, false);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    let text = exchange_within(
        ([127, 0, 0, 1], port).into(),
        raw.as_bytes(),
        Duration::from_secs(30),
    );
    let status = parse_responses(&text).first().map_or(0, |r| r.status);
    (status, t.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn haproxy_routes_each_model_to_its_node_and_fails_over() {
    let Some(haproxy) = std::env::var_os("VLLAMA_HAPROXY").map(PathBuf::from) else {
        assert!(
            std::env::var_os("VLLAMA_REQUIRE_PROXIES").is_none(),
            "VLLAMA_REQUIRE_PROXIES is set but VLLAMA_HAPROXY is not"
        );
        eprintln!("skipped: VLLAMA_HAPROXY not set (tests/run prepares it)");
        return;
    };
    let (a, b) = (node(), node());
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = recipe()
        .replace("127.0.0.1:11435", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:11434", &a.api.to_string())
        .replace("127.0.0.2:11434", &b.api.to_string());
    let config_path = dir.path().join("haproxy.cfg");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("haproxy.log");
    let _proxy = Haproxy(
        Command::new(&haproxy)
            .arg("-f")
            .arg(&config_path)
            .arg("-db")
            .env(
                "LD_LIBRARY_PATH",
                std::env::var_os("VLLAMA_HAPROXY_LIBS").unwrap_or_default(),
            )
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
            .spawn()
            .expect("haproxy"),
    );
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        up,
        "{}",
        std::fs::read_to_string(dir.path().join("haproxy.err")).unwrap_or_default()
    );
    // Both nodes' checks pass (rise 2, inter 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    // Warm-up: one cold start per model, on the node the hash picks; `:latest` goes there too.
    for model in MODELS {
        assert_eq!(
            chat(port, model).0,
            200,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert_eq!(chat(port, &format!("{model}:latest")).0, 200);
    }
    let home = |model: &str| -> &Daemon {
        match (served(&a, model), served(&b, model)) {
            (2, 0) => &a,
            (0, 2) => &b,
            other => panic!("{model} was served by both nodes: {other:?}"),
        }
    };
    let (alpha_home, beta_home) = (home(MODELS[0]), home(MODELS[1]));
    assert!(
        !std::ptr::eq(alpha_home, beta_home),
        "the recipe's hash put both models on one node: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let spawned = |d: &Daemon| d.log_count("engine spawned");
    let before = (spawned(&a), spawned(&b));
    assert_eq!(before, (1, 1));

    // 1 000 requests, 8 at once, the two models by turns.
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let latencies = latencies.clone();
            std::thread::spawn(move || {
                for i in 0..125 {
                    let (status, took) = chat(port, MODELS[(w + i) % 2]);
                    assert_eq!(status, 200);
                    latencies.lock().unwrap().push(took);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort();
    assert_eq!(latencies.len(), 1000);
    for (model, node) in MODELS.iter().zip([alpha_home, beta_home]) {
        let elsewhere = if std::ptr::eq(node, &a) { &b } else { &a };
        assert_eq!(
            served(node, model),
            502,
            "{model}: every request on its node"
        );
        assert_eq!(served(elsewhere, model), 0, "{model}: none elsewhere");
    }
    assert_eq!(
        (spawned(&a), spawned(&b)),
        before,
        "an engine started after the warm-up"
    );
    eprintln!(
        "through HAProxy: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // The first model's node dies: it is answered again by the other node, after one cold start.
    let (mut dead, survivor) = if std::ptr::eq(alpha_home, &a) {
        (a, b)
    } else {
        (b, a)
    };
    let survivor_spawned = spawned(&survivor);
    dead.signal(libc::SIGKILL);
    dead.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    let mut failed = 0;
    let mut last = 0;
    let back = wait_until(Duration::from_secs(20), || {
        last = chat(port, MODELS[0]).0;
        failed += usize::from(last != 200);
        last == 200
    });
    assert!(back, "{} not served after its node died: {last}", MODELS[0]);
    let failover = killed.elapsed();
    assert_eq!(served(&survivor, MODELS[0]), 1, "served by the survivor");
    assert_eq!(
        spawned(&survivor),
        survivor_spawned + 1,
        "one cold start there"
    );
    // The second model's requests were never on the dead node.
    assert_eq!(chat(port, MODELS[1]).0, 200);
    eprintln!(
        "fail-over: {} answered {failover:?} after its node died ({failed} requests failed meanwhile)",
        MODELS[0]
    );
}
