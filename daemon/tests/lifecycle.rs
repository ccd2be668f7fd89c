//! The systemd protocol and the daemon's life, against the real binary: socket activation by
//! name, READY/STATUS/WATCHDOG/RELOADING/STOPPING in order, reload that applies or keeps the
//! old configuration, and SIGTERM that drains requests in flight.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vllama_testkit::{parse_responses, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");
const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;

fn admin_status(d: &Daemon) -> serde_json::Value {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(&d.admin).expect("admin socket");
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    parse_responses(&out)[0].json()
}

#[test]
fn socket_activated_by_name() {
    let d = Daemon::start(BIN, DaemonOptions::default().activated());
    assert_eq!(d.get("/").body, "Ollama is running");
    let status = admin_status(&d);
    let listeners = status["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 2);
    for l in listeners {
        assert_eq!(l["source"], "socket-activation", "{l}");
    }
    assert_eq!(listeners[0]["name"], "api");
    assert_eq!(listeners[0]["address"], d.api.to_string());
    assert_eq!(listeners[1]["name"], "admin");
    assert_eq!(listeners[1]["address"], d.admin.display().to_string());
    assert_eq!(status["pid"], d.pid());
    let log = d.log();
    assert!(log.contains("source=socket activation"), "{log}");
}

#[test]
fn bound_by_hand_when_not_activated() {
    let d = Daemon::start(BIN, DaemonOptions::default());
    let status = admin_status(&d);
    for l in status["listeners"].as_array().unwrap() {
        assert_eq!(l["source"], "bound", "{l}");
    }
    assert!(d.log().contains("source=bound by vllamad"));
}

#[test]
fn ready_status_and_watchdog_reach_systemd() {
    let d = Daemon::start(
        BIN,
        DaemonOptions {
            watchdog_usec: Some(200_000),
            ..DaemonOptions::default().activated()
        },
    );
    let first = &d.notify.messages()[0];
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    let status = first.lines().find(|l| l.starts_with("STATUS=")).unwrap();
    assert!(status.contains(&d.api.to_string()), "{status}");
    // 200 ms watchdog: pings every 100 ms.
    assert!(d.notify.wait_count("WATCHDOG=1", 5, Duration::from_secs(3)));
}

#[test]
fn sighup_applies_a_good_config_and_keeps_serving_on_a_bad_one() {
    let small = DaemonOptions::default()
        .activated()
        .set("api", "max_request_body = \"1KiB\"");
    let mut d = Daemon::start(BIN, small.clone());
    let body = "z".repeat(1500);
    assert_eq!(d.request("POST", "/x", &body).status, 413);

    // A good config: applied, and systemd saw RELOADING=1 + MONOTONIC_USEC, then READY=1.
    let larger = DaemonOptions::default()
        .set("api", "max_request_body = \"2KiB\"")
        .set("daemon", "shutdown_grace = \"3s\"");
    d.write_config(&larger);
    d.signal(SIGHUP);
    assert!(
        d.notify.wait_count("READY=1", 2, Duration::from_secs(5)),
        "{}",
        d.log()
    );
    let lines = d.notify.lines();
    let reloading = lines
        .iter()
        .position(|l| l == "RELOADING=1")
        .expect("RELOADING=1");
    assert!(
        lines[reloading + 1].starts_with("MONOTONIC_USEC="),
        "{lines:?}"
    );
    let usec: u64 = lines[reloading + 1]["MONOTONIC_USEC=".len()..]
        .parse()
        .unwrap();
    assert!(usec > 0);
    let second_ready = lines.iter().rposition(|l| l == "READY=1").unwrap();
    assert!(second_ready > reloading, "{lines:?}");
    assert_eq!(
        d.request("POST", "/x", &body).status,
        404,
        "new limit applied"
    );
    assert_eq!(admin_status(&d)["config"]["generation"], 2);

    // A broken config: refused, old one kept, still serving, the error reported.
    std::fs::write(&d.config_path, "[api]\nmax_request_body = \"huge\"\n").unwrap();
    d.signal(SIGHUP);
    assert!(d.notify.wait_count("READY=1", 3, Duration::from_secs(5)));
    assert_eq!(
        d.request("POST", "/x", &body).status,
        404,
        "old config kept"
    );
    let status = admin_status(&d);
    assert_eq!(status["config"]["generation"], 2);
    let err = status["config"]["last_reload_error"].as_str().unwrap();
    assert!(
        err.contains("api.max_request_body") && err.contains(":2:"),
        "{err}"
    );
    assert!(d.log().contains("configuration reload refused"));

    d.signal(SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn sigterm_drains_the_request_in_flight_then_exits_0() {
    let mut d = Daemon::start(
        BIN,
        DaemonOptions::default()
            .activated()
            .set("daemon", "shutdown_grace = \"10s\""),
    );
    // A request whose body is half sent is in flight.
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /api/unknown HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n12345",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.signal(SIGTERM);
    assert!(d.notify.wait_count("STOPPING=1", 1, Duration::from_secs(5)));
    // The daemon waits for it ...
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.wait_exit(Duration::ZERO).is_none(),
        "exited with a request in flight"
    );
    // ... which completes with a real answer.
    s.write_all(b"67890").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let resp = parse_responses(&out);
    assert_eq!(resp[0].status, 404, "{out}");
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("did not exit after draining");
    assert!(status.success(), "{status:?}");
}

/// `api.threads` connection threads serve the public API, each connection on one of them;
/// the runtime's task gauge counts the tasks of all of them; SIGTERM stops them and exits.
#[test]
fn connections_are_served_on_threads_of_their_own() {
    let mut d = Daemon::start(BIN, DaemonOptions::default().set("api", "threads = 3"));
    let threads = || {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .filter(|name| name.starts_with("vllamad-conn"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        threads(),
        ["vllamad-conn-0", "vllamad-conn-1", "vllamad-conn-2"]
    );
    // Thirty clients, each asking twice on its kept-alive connection.
    let mut clients: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(d.api).unwrap())
        .collect();
    for round in 0..2 {
        for s in &mut clients {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        }
    }
    // The thirty connections are tasks of the connection threads' runtimes.
    let metrics = d.get("/metrics").body;
    let tasks: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vllama_runtime_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no vllama_runtime_tasks: {metrics}"));
    assert!(tasks >= 30.0, "{tasks} tasks with 30 connections open");
    drop(clients);
    d.signal(SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("did not exit with connection threads");
    assert!(status.success(), "{status:?}");
}

#[test]
fn shutdown_grace_bounds_the_drain() {
    let mut d = Daemon::start(
        BIN,
        DaemonOptions::default().set("daemon", "shutdown_grace = \"500ms\""),
    );
    let mut s = TcpStream::connect(d.api).unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n1")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    d.signal(SIGINT);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("hung past the grace");
    assert!(status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert!(d.log().contains("still in flight after the shutdown grace"));
    // By hand, the daemon bound the admin socket, so it removes it.
    assert!(!d.admin.exists());
    // And nothing listens any more.
    assert!(TcpStream::connect(d.api).is_err());
}

#[test]
fn stale_admin_socket_is_replaced_live_one_is_not() {
    let shared = tempfile::tempdir().unwrap();
    let options = DaemonOptions {
        admin_socket: Some(shared.path().join("admin.sock")),
        ..DaemonOptions::default()
    };
    let first = Daemon::start(BIN, options.clone());
    drop(first); // SIGKILL: the socket file stays behind, stale
    assert!(shared.path().join("admin.sock").exists());

    let second = Daemon::start(BIN, options.clone());
    assert_eq!(admin_status(&second)["pid"], second.pid());
    assert!(second.log().contains("replacing a stale admin socket"));

    // While the second one serves, a third refuses to steal its socket.
    let mut third = Daemon::spawn(BIN, options);
    let status = third
        .wait_exit(Duration::from_secs(10))
        .expect("third kept running");
    assert!(!status.success());
    assert!(
        third.log().contains("already serving the admin socket"),
        "{}",
        third.log()
    );
    assert_eq!(admin_status(&second)["pid"], second.pid());
}
