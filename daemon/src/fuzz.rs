//! Randomized tests of everything that parses outside input — request bodies and their
//! fields, durations and sizes, model names, the configuration file, engine event streams and
//! error bodies, environment values, CORS patterns — checking that nothing panics (and a few
//! round-trip properties). Stable Rust has no coverage-guided fuzzer that builds here
//! (cargo-fuzz needs nightly), so inputs come from a seeded generator: random bytes, JSON
//! built from the fields these parsers read, and mutations of recorded real inputs.
//!
//! `VLLAMA_FUZZ_ITERS` (default 2 000) inputs per target; `VLLAMA_FUZZ_SEED` picks the run.
//! A failing input is printed with its target and seed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Map, Value};

/// xorshift64*: small, fast, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Keys the parsers read, so that random JSON reaches past the first check.
const KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "images",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "tool_name",
    "options",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "num_predict",
    "stop",
    "repeat_penalty",
    "num_ctx",
    "format",
    "think",
    "logprobs",
    "top_logprobs",
    "stream",
    "keep_alive",
    "prompt",
    "system",
    "raw",
    "truncate",
    "shift",
    "tools",
    "type",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "error",
    "message",
    "detail",
    "choices",
    "delta",
    "reasoning",
    "id",
    "token",
    "bytes",
    "text",
    "finish_reason",
    "token_ids",
    "prompt_token_ids",
    "reasoning_content",
    "index",
];

const WORDS: &[&str] = &[
    "",
    "user",
    "assistant",
    "tool",
    "system",
    "tiny",
    "qwen2.5:0.5b",
    "org/name@rev",
    "json",
    "low",
    "high",
    "max",
    "5m",
    "-1",
    "0",
    "1h30m",
    "iVBORw0KGgo",
    "/9j/",
    "data: [DONE]",
    "\u{2588}\u{258c}",
    "\u{0}",
    "\\",
    "\"",
    "{",
    "}",
    "*",
    "..",
    "µs",
    "9999999999999999999999",
];

fn json_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth == 0 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 1),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!((rng.next() as f64) / (rng.next().max(1) as f64) - 0.5),
        4 => json!(rng.pick(WORDS)),
        5 | 6 => {
            let mut m = Map::new();
            for _ in 0..rng.below(6) {
                m.insert(rng.pick(KEYS).to_string(), json_value(rng, depth - 1));
            }
            Value::Object(m)
        }
        _ => Value::Array(
            (0..rng.below(4))
                .map(|_| json_value(rng, depth - 1))
                .collect(),
        ),
    }
}

fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    (0..rng.below(max)).map(|_| rng.next() as u8).collect()
}

/// A seed with a few bytes flipped, inserted or removed.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(3) {
            0 if at < v.len() => v[at] = rng.next() as u8,
            1 => v.insert(at, *rng.pick(b"{}[]\":,\\\n0a\xff")),
            _ if at < v.len() => {
                v.remove(at);
            }
            _ => {}
        }
    }
    v
}

/// One input for a text parser: random bytes, a word, a mutated word, or JSON text.
fn text(rng: &mut Rng) -> String {
    let raw = match rng.below(4) {
        0 => bytes(rng, 48),
        1 => rng.pick(WORDS).as_bytes().to_vec(),
        2 => {
            let w = rng.pick(WORDS).as_bytes().to_vec();
            mutate(rng, &w)
        }
        _ => json_value(rng, 2).to_string().into_bytes(),
    };
    String::from_utf8_lossy(&raw).into_owned()
}

const SEEDS: &[&str] = &[
    include_str!("../../tests/fixtures/real-vllm/chat-stream.sse"),
    include_str!("../../tests/fixtures/real-vllm/chat-tool-call-stream.sse"),
    include_str!("../../tests/fixtures/real-vllm/messages-stream.sse"),
    include_str!("../../tests/fixtures/real-vllm/responses-stream.sse"),
    include_str!("../../tests/fixtures/real-vllm/chat-logprobs.json"),
    include_str!("../../tests/fixtures/real-vllm/chat.json"),
    include_str!("../../packaging/vllama.toml"),
];

fn iterations() -> u64 {
    std::env::var("VLLAMA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Runs `target` on `iterations()` inputs from `make`; a panic fails with the input.
fn run<I: std::fmt::Debug>(name: &str, make: impl Fn(&mut Rng) -> I, target: impl Fn(&I)) -> u64 {
    let seed = std::env::var("VLLAMA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15u64);
    let mut rng = Rng(seed ^ name.len() as u64 ^ 0x1234_5678);
    let n = iterations();
    for _ in 0..n {
        let input = make(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            panic!("{name} panicked (VLLAMA_FUZZ_SEED={seed}) on {input:?}");
        }
    }
    n
}

fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => bytes(rng, 256),
        1 => {
            let seed = rng.pick(SEEDS).as_bytes().to_vec();
            mutate(rng, &seed)
        }
        _ => json_value(rng, 4).to_string().into_bytes(),
    }
}

#[test]
fn nothing_that_parses_outside_input_panics() {
    use crate::engine::wire;
    use crate::ollama::translate;
    let mut total = 0;
    total += run("openai body", body, |b| {
        if let Ok(parsed) = crate::openai::body::RequestBody::parse(b) {
            let out = parsed.with_model("served");
            // The rewritten body is JSON whose model is the new name (numbers beyond f64's
            // range are valid JSON, passed on as they came: not parsed into a Value here).
            let again = crate::openai::body::RequestBody::parse(&out).expect("valid JSON");
            assert_eq!(again.model(), "served");
        }
    });
    total += run(
        "ollama fields",
        |r| json_value(r, 4),
        |v| {
            let mut m = Map::new();
            let _ = translate::options(Some(v), &mut m);
            let _ = translate::format(Some(v), &mut m);
            let _ = translate::Thinking::parse(Some(v));
            let _ = translate::logprobs(Some(v), v.get("top_logprobs"));
            let _ = translate::ollama_logprobs(v);
            if let Value::Array(items) = v {
                let _ =
                    translate::messages(crate::ollama::request::Messages::Values(items.clone()));
            }
            let text = |t: &str| crate::ollama::outbound::Content::Text(t.to_owned().into());
            let _ = translate::generate_messages(
                v["system"].as_str().map(text),
                text(v["prompt"].as_str().unwrap_or("")),
                v.get("images"),
            );
        },
    );
    total += run("durations and sizes", text, |t| {
        let _ = crate::units::parse_go_duration_nanos(t);
        let _ = crate::units::KeepAlive::parse(t);
        let _ = crate::units::ByteSize::parse(t);
        let _ = serde_json::from_str::<crate::units::KeepAlive>(t);
    });
    total += run("model names", text, |t| {
        if let Ok(n) = crate::models::ModelName::parse(t) {
            // A parsed name parses again to itself.
            assert_eq!(
                crate::models::ModelName::parse(&n.to_string()).ok(),
                Some(n)
            );
        }
    });
    total += run(
        "configuration file",
        |r| {
            let seed = include_str!("../../packaging/vllama.toml").replace("\n#", "\n");
            String::from_utf8_lossy(&mutate(r, seed.as_bytes())).into_owned()
        },
        |t| {
            let _ = crate::config::parse(t, std::path::Path::new("/fuzz.toml"));
        },
    );
    total += run(
        "engine event streams",
        |r| {
            let seed = r.pick(SEEDS).as_bytes().to_vec();
            let data = if r.below(2) == 0 {
                mutate(r, &seed)
            } else {
                bytes(r, 300)
            };
            let cuts: Vec<usize> = (0..r.below(5)).map(|_| r.below(data.len() + 1)).collect();
            (data, cuts)
        },
        |(data, cuts)| {
            let mut buf = bytes::BytesMut::new();
            let mut usage = crate::openai::usage::UsageScan::default();
            let mut ids = crate::openai::responses::IdScan::default();
            let ends = crate::openai::dialect::stream_end(
                ["/v1/chat/completions", "/v1/messages", "/v1/responses"][data.len() % 3],
            )
            .0;
            let mut marker = crate::openai::relay::Marker::new(ends);
            let mut sorted = cuts.clone();
            sorted.sort_unstable();
            let mut from = 0;
            for to in sorted.into_iter().chain([data.len()]) {
                let chunk = &data[from..to.max(from)];
                from = to.max(from);
                buf.extend_from_slice(chunk);
                usage.feed(chunk);
                marker.feed(chunk);
                let _ = ids.feed(chunk);
                while let Some(event) = crate::sse::take_event(&mut buf) {
                    if let crate::sse::Event::Data(data) = event {
                        let _ = crate::ollama::chunk::parse(&data);
                    }
                }
            }
            // The end marker is found across any frame cuts exactly when the stream holds it.
            let whole = ends
                .iter()
                .any(|n| memchr::memmem::find(data, n.bytes()).is_some());
            assert_eq!(marker.seen(), whole, "{cuts:?}");
            let _ = crate::engine::limits::context_overflow(&String::from_utf8_lossy(data));
            let _ = crate::engine::vllm::level_of(&String::from_utf8_lossy(data));
            for d in [
                crate::openai::Dialect::OpenAi,
                crate::openai::Dialect::Anthropic,
            ] {
                let _ = d.engine_error(hyper::StatusCode::BAD_REQUEST, data);
            }
        },
    );
    total += run(
        "environment and origins",
        |r| (text(r), text(r)),
        |(a, b)| {
            for (var, _) in crate::config::ollama_env::MAPPED {
                let _ = crate::config::ollama_env::translate(var, a);
            }
            // Patterns come from the configuration (few stars); origins from clients.
            let pattern: String = a.chars().take(24).collect();
            let _ = crate::cors::origin_allowed(b, &[pattern]);
        },
    );
    // Events of the recorded streams, one at a time, mutated or rebuilt from random JSON:
    // whatever the one-pass chunk reader reads, serde reads the same (and it reads the
    // unmutated ones itself, so a reader that gave up on everything would fail here).
    let events: Vec<&str> = SEEDS
        .iter()
        .flat_map(|s| s.split("\n\n"))
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| e.starts_with('{'))
        .collect();
    let read_here = std::sync::atomic::AtomicU64::new(0);
    total += run(
        "chunk reader",
        |r| match r.below(4) {
            0 => r.pick(&events).as_bytes().to_vec(),
            1 => json_value(r, 4).to_string().into_bytes(),
            _ => {
                let event = r.pick(&events).as_bytes().to_vec();
                mutate(r, &event)
            }
        },
        |data| {
            if let Some(fast) = crate::ollama::chunk::compact::chunk(data) {
                read_here.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let slow = serde_json::from_slice::<crate::ollama::chunk::Chunk<'_>>(data)
                    .map(|c| format!("{c:?}"));
                assert_eq!(slow.ok(), Some(format!("{fast:?}")));
            }
        },
    );
    assert!(
        read_here.into_inner() > iterations() / 4,
        "the one-pass reader read too few events"
    );
    // Engine answers (engine/wire.rs): a head and a chunked, sized or close-delimited body,
    // well formed or mutated, fed in random pieces. A well-formed body decodes to what was
    // encoded and leaves what follows it; nothing panics or yields more than came in.
    total += run(
        "engine answers",
        |r| {
            let body = bytes(r, 300);
            let framing = *r.pick(&[
                wire::Framing::Chunked,
                wire::Framing::Length(body.len() as u64),
                wire::Framing::Close,
            ]);
            let mut encoded = match framing {
                wire::Framing::Chunked => {
                    let mut out = Vec::new();
                    for piece in body.chunks(1 + r.below(64)) {
                        out.extend_from_slice(format!("{:x}", piece.len()).as_bytes());
                        if r.below(4) == 0 {
                            out.extend_from_slice(b";ext=1");
                        }
                        out.extend_from_slice(b"\r\n");
                        out.extend_from_slice(piece);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(if r.below(4) == 0 {
                        b"0\r\nx: y\r\n\r\n"
                    } else {
                        b"0\r\n\r\n"
                    });
                    out
                }
                _ => body.clone(),
            };
            let mutated = r.below(3) == 0;
            if mutated {
                encoded = mutate(r, &encoded);
            }
            let head = mutate(
                r,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 12\r\n\r\n",
            );
            (head, framing, body, encoded, mutated, 1 + r.below(80))
        },
        |(head, framing, body, encoded, mutated, piece)| {
            let _ = wire::parse_head(head, &http::Method::POST);
            let mut wire_bytes = encoded.clone();
            wire_bytes.extend_from_slice(b"NEXT");
            let mut decoder = wire::Decoder::new(*framing);
            let mut buf = bytes::BytesMut::new();
            let mut out = Vec::new();
            let mut ended = false;
            let mut fed = 0;
            'feed: while fed < wire_bytes.len() {
                let to = (fed + piece).min(wire_bytes.len());
                buf.extend_from_slice(&wire_bytes[fed..to]);
                fed = to;
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(wire::Step::Data(d)) => out.extend_from_slice(&d),
                        Ok(wire::Step::More) => break,
                        Ok(wire::Step::End) => {
                            ended = true;
                            break 'feed;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
            buf.extend_from_slice(&wire_bytes[fed..]);
            assert!(out.len() <= wire_bytes.len());
            if !mutated && *framing != wire::Framing::Close {
                assert!(ended, "a well-formed body ended");
                assert_eq!(&out, body);
                assert_eq!(&buf[..], b"NEXT");
            }
        },
    );
    // Request heads (h1/head.rs): well formed ones read back as written, in any prefix
    // incomplete; mutated ones read or refused, never a panic.
    total += run(
        "request heads",
        |r| {
            let method = *r.pick(&["GET", "POST", "HEAD", "OPTIONS", "DELETE", "PATCH"]);
            let path: String = (0..1 + r.below(40))
                .map(|_| *r.pick(&['a', 'z', '/', '_', '-', '.', '%', '?', '=', '&', '1']))
                .collect();
            let mut head = format!("{method} /{path} HTTP/1.{}\r\n", r.below(2));
            let fields = r.below(12);
            for i in 0..fields {
                let name = *r.pick(&[
                    "Host",
                    "Content-Type",
                    "X-Request-Id",
                    "Authorization",
                    "Accept",
                    "X-A",
                ]);
                let value: String = (0..r.below(30))
                    .map(|_| char::from(b' ' + (r.below(94) as u8) + 1))
                    .collect();
                head.push_str(&format!("{name}{i}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            let mutated = r.below(3) == 0;
            let bytes = if mutated {
                mutate(r, head.as_bytes())
            } else {
                head.clone().into_bytes()
            };
            (bytes, method, path, fields, mutated)
        },
        |(bytes, method, path, fields, mutated)| {
            for cut in [bytes.len() / 3, bytes.len().saturating_sub(1)] {
                let mut part = bytes::BytesMut::from(&bytes[..cut]);
                if !*mutated {
                    assert!(matches!(crate::h1::head::read_request(&mut part), Ok(None)));
                } else {
                    let _ = crate::h1::head::read_request(&mut part);
                }
            }
            let mut buf = bytes::BytesMut::from(&bytes[..]);
            let read = crate::h1::head::read_request(&mut buf);
            if !*mutated {
                let head = read.expect("a well-formed head").expect("complete");
                assert_eq!(head.method.as_str(), *method);
                assert_eq!(
                    head.uri.path_and_query().map(|p| p.as_str()),
                    Some(&*format!("/{path}"))
                );
                assert_eq!(head.headers.len(), *fields);
                assert!(buf.is_empty());
            }
        },
    );
    let (ring, _, _) = crate::keys::KeyRing::default()
        .with_new(
            "fuzz",
            &["tiny".to_string()],
            crate::keys::Limits::default(),
        )
        .expect("a key");
    let keys_file = ring.render();
    total += run(
        "API keys",
        |r| (mutate(r, keys_file.as_bytes()), body(r), text(r)),
        |(file, body, presented)| {
            let _ = crate::keys::KeyRing::parse(
                &String::from_utf8_lossy(file),
                std::path::Path::new("/fuzz/api-keys.toml"),
            );
            let _ = crate::keys::model_in(body);
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {presented}")) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            // A random secret never matches the key.
            assert!(ring.check(&headers).is_err());
        },
    );
    eprintln!("fuzz: {total} inputs, no panic");
}
