//! The engine's pooled connections survive clients that stop reading at a stream's last
//! event, as the OpenAI and Anthropic SDKs do at `data: [DONE]`: vllamad reads the engine's
//! body to its end (the chunked encoding's last chunk, which uvicorn writes on its own a
//! moment later) before the connection goes back to the pool.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use vllama_testkit::{workspace_bin, Daemon, DaemonOptions};

const BIN: &str = env!("CARGO_BIN_EXE_vllamad");

/// A daemon serving the fake engine as model `m`, with the engine's `env` (a TOML table's
/// inside).
fn daemon(env: &str) -> Daemon {
    let fake = workspace_bin(BIN, "fake-vllm");
    Daemon::start(
        BIN,
        DaemonOptions::default().fake_model(&fake, "m", &[&format!("env = {{ {env} }}")]),
    )
}

/// A streamed chat whose client closes the socket the moment `data: [DONE]` has come.
fn stream_until_done(d: &Daemon) {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}}).to_string();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: [DONE]") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended before [DONE]: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // Gone at once, with the chunked body's last chunk not read: a reset, as a client's
    // process that exits or an SDK that closes its pool sends.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this function owns, with a value of the size it says.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Four clients at a time, a round to warm the pool and then five: the engine connections
/// the five opened (the pool holds four after the first round). Each round is followed by
/// 100 ms, for a body's end that comes after its last event.
fn engine_connections_opened(d: &Daemon, client: impl Fn(usize) + Sync) -> usize {
    let accepted = || {
        std::fs::read_to_string(d.fake_state("m").join("connections.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let round = || {
        std::thread::scope(|s| {
            for i in 0..4 {
                let client = &client;
                s.spawn(move || client(i));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
    };
    round();
    let before = accepted();
    for _ in 0..5 {
        round();
    }
    accepted() - before
}

#[test]
fn clients_leaving_at_done_do_not_cost_engine_connections() {
    let d = daemon(
        r#"FAKE_VLLM_STARTUP_MS = "50", FAKE_VLLM_TOKEN_MS = "1", FAKE_VLLM_TAIL_MS = "30""#,
    );
    stream_until_done(&d); // the engine starts
    let opened = engine_connections_opened(&d, |_| stream_until_done(&d));
    assert!(
        opened <= 4,
        "20 streams left at [DONE] opened {opened} new engine connections"
    );
    // Their token counts still reach the access line: the usage event came before [DONE].
    let log = d.log_with_access();
    let streams: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("vllamad::access") && l.contains("path=/v1/chat/completions"))
        .collect();
    assert_eq!(streams.len(), 25, "{log}");
    for line in streams {
        assert!(line.contains(" eval_tokens=3"), "{line}");
    }
}

/// Ollama's chats read the engine's event stream to `[DONE]` and answer from it: the
/// engine's connection goes back to the pool whether the body's end came with `[DONE]` or a
/// moment after it, for whole answers and for streamed ones.
#[test]
fn ollama_chats_keep_their_engine_connections() {
    for tail in ["0", "30"] {
        let d = daemon(&format!(
            r#"FAKE_VLLM_STARTUP_MS = "50", FAKE_VLLM_TOKEN_MS = "1", FAKE_VLLM_TAIL_MS = "{tail}""#
        ));
        let chat = |stream: bool| {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "options": {"num_predict": 3}});
            let resp = d.request("POST", "/api/chat", &body.to_string());
            assert_eq!(resp.status, 200, "{}", resp.body);
            assert!(resp.body.contains("\"done\":true"), "{}", resp.body);
        };
        chat(false); // the engine starts
        let opened = engine_connections_opened(&d, |i| chat(i % 2 == 0));
        assert!(
            opened <= 4,
            "20 Ollama chats opened {opened} new engine connections (tail {tail} ms)"
        );
    }
}

/// A whole answer the engine gave with its length goes to the client with that length, as
/// nginx passes it on: a client then knows where the body ends from the head, not from a
/// last chunk (`vllamactl bench`'s hyper client woke a second thread for each chunked
/// answer: ~38 µs more of its CPU a request at c = 1). An event stream has no length to
/// give, and stays chunked.
#[test]
fn whole_answers_keep_the_engines_length_and_streams_stay_chunked() {
    let d = daemon(r#"FAKE_VLLM_STARTUP_MS = "50", FAKE_VLLM_TOKEN_MS = "0""#);
    let header = |r: &vllama_testkit::Response, name: &str| r.header(name).map(str::to_string);
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ),
        (
            "/v1/completions",
            json!({"model": "m", "prompt": "hi", "max_tokens": 3}),
        ),
    ] {
        let whole = d.request("POST", path, &body.to_string());
        assert_eq!(whole.status, 200, "{}", whole.body);
        assert_eq!(
            header(&whole, "content-length"),
            Some(whole.body.len().to_string()),
            "{path}: {:?}",
            whole.headers
        );
        assert_eq!(header(&whole, "transfer-encoding"), None, "{path}");
        assert_eq!(
            whole.json()["usage"]["completion_tokens"],
            3,
            "{}",
            whole.body
        );

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let stream = d.request("POST", path, &streamed.to_string());
        assert_eq!(stream.status, 200, "{}", stream.body);
        assert_eq!(
            header(&stream, "transfer-encoding").as_deref(),
            Some("chunked"),
            "{path}"
        );
        assert_eq!(header(&stream, "content-length"), None, "{path}");
        assert!(
            stream.body.trim_end().ends_with("data: [DONE]"),
            "{}",
            stream.body
        );
    }
}
