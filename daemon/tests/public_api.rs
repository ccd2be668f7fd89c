//! The public listener, against the real binary: Ollama's probe routes, errors as JSON,
//! keep-alive, pipelining, and the body limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use vllama_testkit::{exchange, parse_responses, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

fn daemon() -> Daemon {
    Daemon::start(
        BIN,
        DaemonOptions::default().set("api", "max_request_body = \"1KiB\""),
    )
}

#[test]
fn probe_routes_answer_like_ollama() {
    let d = daemon();
    let root = d.get("/");
    assert_eq!(root.status, 200);
    assert_eq!(root.body, "Ollama is running");
    assert!(root
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));

    let version = d.get("/api/version");
    assert_eq!(version.status, 200);
    // The Ollama API version implemented (clients gate features on it), and vllama's own.
    assert_eq!(version.json()["version"], vllamad::api::OLLAMA_API_VERSION);
    assert_eq!(version.json()["vllama_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        version.header("x-vllama-version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(version
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));

    // HEAD: same status and headers, no body.
    let raw = exchange(
        d.api,
        b"HEAD / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD carried a body: {raw:?}");
}

#[test]
fn unknown_routes_and_methods_are_json_errors() {
    let d = daemon();
    let missing = d.get("/api/nothing-here");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .contains("/api/nothing-here"));

    // Under /v1/ the error is OpenAI's shape (the SDKs show only the status otherwise),
    // under /v1/messages Anthropic's.
    let openai = d.get("/v1/nothing");
    assert_eq!(openai.status, 404);
    assert_eq!(openai.json()["error"]["type"], "invalid_request_error");
    assert!(openai.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing"));
    let anthropic = d.get("/v1/messages/batches");
    assert_eq!(anthropic.status, 404);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "not_found_error");

    // So is a body over the limit.
    let big = format!("{{\"model\":\"x\",\"pad\":\"{}\"}}", "x".repeat(2048));
    let too_big = d.request("POST", "/v1/messages", &big);
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.json()["error"]["type"], "request_too_large");
    let too_big = d.request("POST", "/v1/responses", &big);
    assert_eq!(too_big.status, 413);
    assert!(too_big.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api.max_request_body"));

    let wrong = d.request("DELETE", "/api/version", "");
    assert_eq!(wrong.status, 405);
    assert!(wrong.json()["error"].is_string());
}

#[test]
fn keep_alive_and_pipelining() {
    let d = daemon();
    // Two requests on one connection, one after the other.
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    // Three requests in one write: three responses, in order.
    let raw = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n\
               GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n\
               GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let responses = parse_responses(&exchange(d.api, raw.as_bytes()));
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 404]);
    assert_eq!(responses[0].body, "Ollama is running");
    assert!(responses[1].body.contains("version"));
}

#[test]
fn oversized_bodies_get_413_and_the_server_lives_on() {
    let d = daemon();
    let ok = d.request("POST", "/nope", &"x".repeat(1024));
    assert_eq!(ok.status, 404, "a body at the limit is read");

    let big = d.request("POST", "/api/version", &"x".repeat(1025));
    assert_eq!(big.status, 413);
    assert!(big.json()["error"].as_str().unwrap().contains("1KiB"));

    // Declared huge, never sent: refused from the header alone.
    let raw = "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n\r\n";
    let resp = parse_responses(&exchange(d.api, raw.as_bytes()));
    assert_eq!(resp[0].status, 413);

    // Chunked with no length: the limit still holds.
    let mut raw =
        String::from("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        raw.push_str("200\r\n");
        raw.push_str(&"y".repeat(0x200));
        raw.push_str("\r\n");
    }
    raw.push_str("0\r\n\r\n");
    let resp = parse_responses(&exchange(d.api, raw.as_bytes()));
    assert_eq!(resp[0].status, 413);

    assert_eq!(d.get("/").status, 200, "still serving");
}

#[test]
fn garbage_does_not_hurt() {
    let d = daemon();
    let text = exchange(d.api, b"\x00\x01NOT HTTP AT ALL\r\n\r\n");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text:?}"
    );
    assert_eq!(d.get("/").status, 200);
}

/// Reads from `s` until `want` has arrived (or the read times out).
fn read_until(s: &mut TcpStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_client_that_expects_100_continue_is_told_when_its_body_is_wanted() {
    let d = daemon();
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = r#"{"model":"nothing-here"}"#;
    write!(
        s,
        "POST /api/show HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let interim = read_until(&mut s, "\r\n\r\n");
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let answer = read_until(&mut s, "}");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.contains("nothing-here"),
        "the body was read: {answer}"
    );
    // The connection carries the next request.
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(read_until(&mut s, "running").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_chunked_body_arriving_in_pieces_is_read_whole() {
    let d = daemon();
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    let pieces = [
        "POST /api/show HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
        "6\r\n{\"mode",
        "\r\n",
        "12\r\nl\":\"nothing-h",
        "ere\"}\r\n",
        "0\r\n\r\n",
    ];
    for piece in pieces {
        s.write_all(piece.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = read_until(&mut s, "}");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("nothing-here"), "{answer}");
    // What followed the body is the next request.
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(read_until(&mut s, "running").starts_with("HTTP/1.1 200"));
}

#[test]
fn http_1_0_clients_get_bodies_they_can_read() {
    let d = daemon();
    // No keep-alive asked: the answer says the connection closes, and it does.
    let raw = exchange(d.api, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("connection: close\r\n"), "{raw}");
    assert!(raw.ends_with("Ollama is running"), "{raw}");
    // Keep-alive asked: kept, and said so.
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let answer = read_until(&mut s, "running");
        assert!(answer.contains("connection: keep-alive\r\n"), "{answer}");
        assert!(!answer.contains("chunked"), "{answer}");
    }
}
