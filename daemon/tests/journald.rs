//! Under systemd (stderr is the journal: `JOURNAL_STREAM` matches it) vllamad logs natively to
//! journald, with structured fields. This machine runs no journald, so the test plays it:
//! it binds journald's socket and reads the native protocol's datagrams.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vllama_testkit::{is_root, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");
const JOURNAL: &str = "/run/systemd/journal/socket";

/// One journal entry of the native protocol: `NAME=value\n`, or `NAME\n` + 64-bit LE length +
/// value + `\n` for values that may hold newlines (what tracing-journald sends).
fn parse(datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = datagram;
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            rest = &rest[nl + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let after = &rest[nl + 1..];
            if after.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
            let value = &after[8..8 + len.min(after.len() - 8)];
            fields.push((name, String::from_utf8_lossy(value).into_owned()));
            rest = &after[(8 + len + 1).min(after.len())..];
        }
    }
    fields
}

#[test]
fn logs_natively_to_journald_with_structured_fields() {
    if Path::new(JOURNAL).exists() || !is_root() {
        eprintln!("skipped: a real journald runs here, or not root (the test binds {JOURNAL})");
        return;
    }
    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    let socket = UnixDatagram::bind(JOURNAL).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(JOURNAL);
        }
    }
    let _cleanup = Cleanup;
    // Like journald, drain the socket all the time (a full queue blocks the sender).
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    received.lock().unwrap().push(parse(&buf[..n]));
                }
            }
        })
    };

    let d = Daemon::start(
        BIN,
        DaemonOptions {
            journal: true,
            ..DaemonOptions::default()
        },
    );
    assert_eq!(d.get("/").status, 200);
    let end = Instant::now() + Duration::from_secs(3);
    let has_ready = |entries: &Vec<Vec<(String, String)>>| {
        entries
            .iter()
            .any(|e| e.iter().any(|(k, v)| k == "MESSAGE" && v == "ready"))
    };
    while Instant::now() < end && !has_ready(&received.lock().unwrap()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let entries = received.lock().unwrap().clone();
    let field = |e: &Vec<(String, String)>, key: &str| {
        e.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let listening: Vec<_> = entries
        .iter()
        .filter(|e| field(e, "MESSAGE").as_deref() == Some("listening"))
        .collect();
    assert_eq!(listening.len(), 2, "entries: {entries:?}");
    let api = listening
        .iter()
        .find(|e| field(e, "LISTENER").as_deref() == Some("api"))
        .expect("LISTENER=api");
    assert_eq!(field(api, "ADDRESS"), Some(d.api.to_string()));
    assert_eq!(field(api, "SYSLOG_IDENTIFIER").as_deref(), Some("vllamad"));
    assert_eq!(
        field(api, "PRIORITY").as_deref(),
        Some("5"),
        "info is journald's notice"
    );
    assert!(field(api, "TARGET").is_some_and(|t| t.starts_with("vllamad")));
    // Nothing went to stderr as text: it is the journal stream.
    assert!(
        !d.log().contains("listening"),
        "text logs on stderr too: {}",
        d.log()
    );
}
