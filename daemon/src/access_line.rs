//! The access line: one per public request, written when the request ends.
//!
//! Under journald it is a tracing event (its fields become the entry's `STATUS=`,
//! `REQUEST_ID=`, …). For text and JSON on stderr it is written by hand straight into the
//! log writer's batch: tracing's formatter visited every field through `core::fmt` and
//! `dyn Debug` — 13% of vllamad's own instructions per proxied request — for a line whose
//! shape never changes. The hand-written line is byte for byte what tracing wrote (the tests
//! compare the two), so what reads the log reads it as before.

use std::sync::OnceLock;

/// The access lines' target (`journalctl TARGET=vllamad::access`, `log.filter` directives).
pub const TARGET: &str = crate::log_writer::ACCESS;

/// How access lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// As tracing events (journald, and until logging is set up).
    Tracing,
    /// Text lines as tracing's full format writes them; `ansi`: with its colours.
    Text { ansi: bool },
    /// JSON lines as tracing's JSON format writes them (event fields flattened).
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Chooses the format once, when logging is set up.
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Tracing)
}

/// A finished request, as its access line tells it.
#[derive(Debug, Clone)]
pub struct Access<'a> {
    pub request_id: &'a str,
    /// The client's address, as `Display` writes it.
    pub client: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The API key's id and name.
    pub key: Option<(&'a str, &'a str)>,
    /// The model name the client asked for.
    pub requested: Option<&'a str>,
    /// The canonical name of the model that served it.
    pub model: Option<&'a str>,
    pub status: u16,
    pub head_us: u64,
    pub duration_us: u64,
    pub ttft_us: Option<u64>,
    /// Prompt and generated tokens.
    pub tokens: Option<(u64, u64)>,
}

/// Writes the access line. `span` is the request's: under tracing the event is logged in
/// it; the filter (`log.filter`, `RUST_LOG`) decides in it whether the line is wanted.
pub fn write(access: &Access<'_>, span: &tracing::Span) {
    let _in = span.enter();
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    match format() {
        Format::Tracing => event(access),
        Format::Text { ansi } => crate::log_writer::append_access(|buf| text(access, ansi, buf)),
        Format::Json => crate::log_writer::append_access(|buf| json(access, buf)),
    }
}

fn event(a: &Access<'_>) {
    let ms = |us: u64| us as f64 / 1000.0;
    tracing::info!(
        target: TARGET,
        status = a.status,
        head_ms = ms(a.head_us),
        duration_ms = ms(a.duration_us),
        ttft_ms = a.ttft_us.map(ms),
        prompt_tokens = a.tokens.map(|t| t.0),
        eval_tokens = a.tokens.map(|t| t.1),
        "request"
    );
}

/// The model names the span carries, in the order they were recorded: the one asked for,
/// then the canonical one when it differs (an alias).
fn models<'a>(a: &Access<'a>) -> impl Iterator<Item = &'a str> {
    let served = a.model.filter(|m| Some(*m) != a.requested);
    a.requested.into_iter().chain(served)
}

/// `2026-12-02T14:23:33.473392Z  INFO request{request_id=… client=… method=… path=…
/// key=… key_name=… model=…}: vllamad::access: request status=200 head_ms=… …`
fn text(a: &Access<'_>, ansi: bool, buf: &mut Vec<u8>) {
    let (dim, green, bold, reset) = if ansi {
        ("\x1b[2m", "\x1b[32m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    put(buf, &[dim]);
    timestamp(buf, std::time::SystemTime::now());
    put(buf, &[reset, " ", green, " INFO", reset, " "]);
    put(buf, &[bold, "request{", reset, "request_id=", a.request_id]);
    put(
        buf,
        &[" client=", a.client, " method=", a.method, " path=", a.path],
    );
    if let Some((id, name)) = a.key {
        put(buf, &[" key=", id, " key_name=", name]);
    }
    for model in models(a) {
        put(buf, &[" model=", model]);
    }
    put(buf, &[bold, "}", reset, dim, ":", reset, " "]);
    put(buf, &[dim, TARGET, reset, dim, ":", reset, " request"]);
    measures(a, buf, " ", "=");
    buf.push(b'\n');
}

/// `{"timestamp":…,"level":"INFO","message":"request","status":200,…,"target":
/// "vllamad::access","span":{…,"name":"request"},"spans":[{…}]}`
fn json(a: &Access<'_>, buf: &mut Vec<u8>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, std::time::SystemTime::now());
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    measures(a, buf, ",\"", "\":");
    put(buf, &[",\"target\":\"", TARGET, "\",\"span\":"]);
    let span = buf.len();
    string(buf, "{\"request_id\":", a.request_id);
    string(buf, ",\"client\":", a.client);
    string(buf, ",\"method\":", a.method);
    string(buf, ",\"path\":", a.path);
    if let Some((id, name)) = a.key {
        string(buf, ",\"key\":", id);
        string(buf, ",\"key_name\":", name);
    }
    // A field recorded twice keeps its last value in JSON.
    if let Some(model) = models(a).last() {
        string(buf, ",\"model\":", model);
    }
    buf.extend_from_slice(b",\"name\":\"request\"}");
    let end = buf.len();
    buf.extend_from_slice(b",\"spans\":[");
    buf.extend_from_within(span..end);
    buf.extend_from_slice(b"]}\n");
}

/// `2026-12-02T14:23:33.473392Z` (RFC 3339, UTC, microseconds), as tracing writes it.
fn timestamp(buf: &mut Vec<u8>, now: std::time::SystemTime) {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil(secs / 86_400);
    let of_day = secs % 86_400;
    let two = |buf: &mut Vec<u8>, n: u64, after: u8| {
        buf.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8, after]);
    };
    integer(buf, year);
    buf.push(b'-');
    two(buf, month, b'-');
    two(buf, day, b'T');
    two(buf, of_day / 3600, b':');
    two(buf, of_day / 60 % 60, b':');
    two(buf, of_day % 60, b'.');
    let micros = u64::from(since.subsec_micros());
    let mut digits = [b'0'; 6];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = b'0' + (micros / 10u64.pow(5 - i as u32) % 10) as u8;
    }
    buf.extend_from_slice(&digits);
    buf.push(b'Z');
}

/// The civil date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn put(buf: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        buf.extend_from_slice(part.as_bytes());
    }
}

/// The event's own fields, each named between `open` and `close`: ` status=200 head_ms=…`
/// in text, `,"status":200,"head_ms":…` in JSON.
fn measures(a: &Access<'_>, buf: &mut Vec<u8>, open: &str, close: &str) {
    let name = |buf: &mut Vec<u8>, name: &str| put(buf, &[open, name, close]);
    name(buf, "status");
    integer(buf, u64::from(a.status));
    name(buf, "head_ms");
    millis(buf, a.head_us);
    name(buf, "duration_ms");
    millis(buf, a.duration_us);
    if let Some(us) = a.ttft_us {
        name(buf, "ttft_ms");
        millis(buf, us);
    }
    if let Some((prompt, generated)) = a.tokens {
        name(buf, "prompt_tokens");
        integer(buf, prompt);
        name(buf, "eval_tokens");
        integer(buf, generated);
    }
}

fn integer(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Microseconds as milliseconds, as tracing writes an `f64` (`us / 1000.0`): the shortest
/// decimal, at least one digit after the point.
fn millis(buf: &mut Vec<u8>, us: u64) {
    integer(buf, us / 1000);
    let frac = us % 1000;
    let digits = [
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = match frac {
        f if f % 100 == 0 => 2,
        f if f % 10 == 0 => 3,
        _ => 4,
    };
    buf.extend_from_slice(digits.get(..keep).unwrap_or(&digits));
}

/// A JSON string member (`name` includes the key and colon).
fn string(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access<'static> {
        Access {
            request_id: "vl-1-2",
            client: "127.0.0.1",
            method: "POST",
            path: "/v1/chat/completions",
            key: None,
            requested: Some("tiny:latest"),
            model: Some("tiny:latest"),
            status: 200,
            head_us: 6_326,
            duration_us: 6_463_821,
            ttft_us: None,
            tokens: Some((13, 1)),
        }
    }

    fn text_of(a: &Access<'_>, ansi: bool) -> String {
        let mut buf = Vec::new();
        text(a, ansi, &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn the_text_line_is_tracing_s_layout() {
        let line = text_of(&access(), false);
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(
            humantime::parse_rfc3339(time).is_ok() && time.len() == 27,
            "{time}"
        );
        assert_eq!(
            rest,
            " INFO request{request_id=vl-1-2 client=127.0.0.1 method=POST \
             path=/v1/chat/completions model=tiny:latest}: vllamad::access: request \
             status=200 head_ms=6.326 duration_ms=6463.821 prompt_tokens=13 eval_tokens=1\n"
        );
    }

    #[test]
    fn keys_aliases_and_first_tokens_are_on_the_text_line() {
        let a = Access {
            key: Some(("k-1", "ci")),
            requested: Some("fast"),
            ttft_us: Some(42),
            tokens: None,
            ..access()
        };
        let line = text_of(&a, false);
        assert!(
            line.contains(" key=k-1 key_name=ci model=fast model=tiny:latest}: "),
            "{line}"
        );
        assert!(
            line.ends_with(" ttft_ms=0.042\n") && !line.contains("tokens="),
            "{line}"
        );
        // Coloured on a terminal, the same text beneath.
        let ansi = text_of(&a, true);
        assert!(ansi.contains("\x1b[32m INFO\x1b[0m"), "{ansi}");
        let plain: String = ansi
            .split('\x1b')
            .enumerate()
            .map(|(i, s)| {
                if i == 0 {
                    s
                } else {
                    &s[s.find('m').unwrap() + 1..]
                }
            })
            .collect();
        assert_eq!(plain[27..], line[27..]);
    }

    #[test]
    fn the_json_line_parses_with_tracing_s_members() {
        let a = Access {
            path: "/api/chat\"\\",
            key: Some(("k-1", "ci \"quoted\"")),
            requested: Some("fast"),
            ttft_us: Some(1_500),
            ..access()
        };
        let mut buf = Vec::new();
        json(&a, &mut buf);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["message"], "request");
        assert_eq!(v["status"], 200);
        assert_eq!(v["head_ms"], 6.326);
        assert_eq!(v["duration_ms"], 6463.821);
        assert_eq!(v["ttft_ms"], 1.5);
        assert_eq!(v["prompt_tokens"], 13);
        assert_eq!(v["eval_tokens"], 1);
        let span = &v["span"];
        assert_eq!(span["request_id"], "vl-1-2");
        assert_eq!(span["client"], "127.0.0.1");
        assert_eq!(span["method"], "POST");
        assert_eq!(span["path"], "/api/chat\"\\");
        assert_eq!(span["key_name"], "ci \"quoted\"");
        assert_eq!(span["model"], "tiny:latest");
        assert_eq!(span["name"], "request");
        assert_eq!(v["spans"][0], *span);
        assert!(humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
    }

    /// What tracing's own formatter writes for the access event in the request's span.
    fn by_tracing(a: &Access<'_>, json: bool) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = {
            let sink = sink.clone();
            move || sink.clone()
        };
        let emit = || {
            let span = tracing::info_span!(
                "request",
                request_id = %a.request_id,
                client = %a.client,
                method = %a.method,
                path = %a.path,
                model = tracing::field::Empty,
                key = tracing::field::Empty,
                key_name = tracing::field::Empty,
            );
            if let Some((id, name)) = a.key {
                span.record("key", tracing::field::display(id));
                span.record("key_name", tracing::field::display(name));
            }
            for model in models(a) {
                span.record("model", tracing::field::display(model));
            }
            let _in = span.enter();
            event(a);
        };
        if json {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(writer)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(writer)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        }
        let out = sink.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    /// Requests of every shape: with and without a key, an alias, a first token, counts.
    fn shapes() -> Vec<Access<'static>> {
        let keyed = Access {
            key: Some(("k-1", "ci")),
            requested: Some("fast"),
            ttft_us: Some(42),
            ..access()
        };
        let bare = Access {
            method: "GET",
            path: "/api/tags",
            requested: None,
            model: None,
            tokens: None,
            status: 404,
            head_us: 120,
            duration_us: 250,
            ..access()
        };
        vec![access(), keyed, bare]
    }

    #[test]
    fn the_text_line_is_what_tracing_wrote() {
        for a in shapes() {
            let ours = text_of(&a, false);
            let theirs = by_tracing(&a, false);
            // The timestamps differ by the moments they were taken.
            assert_eq!(ours[27..], theirs[27..], "\n{ours}{theirs}");
        }
    }

    #[test]
    fn the_json_line_is_what_tracing_wrote() {
        for a in shapes() {
            let mut buf = Vec::new();
            json(&a, &mut buf);
            let mut ours: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            let mut theirs: serde_json::Value =
                serde_json::from_str(&by_tracing(&a, true)).unwrap();
            ours["timestamp"] = serde_json::Value::Null;
            theirs["timestamp"] = serde_json::Value::Null;
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn timestamps_and_addresses_are_written_as_tracing_writes_them() {
        use std::time::{Duration, UNIX_EPOCH};
        // Every day from 1970 to past 2100 (leap years, centuries), at odd times of day.
        let mut day = 0u64;
        while day < 50_000 {
            let at = UNIX_EPOCH
                + Duration::from_micros(day * 86_400_000_000 + day * 7_919_777 % 86_400_000_000);
            let mut buf = Vec::new();
            timestamp(&mut buf, at);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                humantime::format_rfc3339_micros(at).to_string()
            );
            day += 13;
        }
    }

    #[test]
    fn milliseconds_are_written_as_tracing_writes_them() {
        let mut buf = Vec::new();
        for us in [1_007, 0, 120_450, 3_500] {
            millis(&mut buf, us);
            buf.push(b' ');
        }
        assert_eq!(String::from_utf8(buf).unwrap(), "1.007 0.0 120.45 3.5 ");
    }
}
