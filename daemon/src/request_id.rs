//! Request ids: a client's `X-Request-Id` when it is a sane token, else one made here. The id
//! is returned in the response, passed to the engine, and carried as the `request_id` field
//! of every log line of the request (journald: `REQUEST_ID`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The client's id if it is 1–128 characters of `[A-Za-z0-9._:-]`, else a new one.
pub fn of(headers: &HeaderMap) -> String {
    if let Some(given) = headers.get(&HEADER).and_then(|v| v.to_str().ok()) {
        let ok = (1..=128).contains(&given.len())
            && given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            return given.to_string();
        }
    }
    new()
}

/// A new id: unique within this daemon's life, and across restarts (start time in it).
pub fn new() -> String {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let mut id = String::with_capacity(3 + 16 + 1 + 16);
    id.push_str("vl-");
    hex(&mut id, epoch);
    id.push('-');
    hex(&mut id, COUNTER.fetch_add(1, Ordering::Relaxed));
    id
}

/// `n` in lower-case hex, as `{:x}` writes it (without `core::fmt`: on every request).
fn hex(out: &mut String, n: u64) {
    let digits = (64 - (n | 1).leading_zeros()).div_ceil(4);
    for i in (0..digits).rev() {
        let nibble = ((n >> (4 * i)) & 0xf) as u32;
        out.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
}

pub fn value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_client_ids_are_kept_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123_X.y:z"));
        assert_eq!(of(&h), "abc-123_X.y:z");
        h.insert(HEADER, HeaderValue::from_static("has space"));
        assert!(of(&h).starts_with("vl-"));
        h.insert(HEADER, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert!(of(&h).starts_with("vl-"));
        let (a, b) = (new(), new());
        assert_ne!(a, b);
        for n in [0, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX] {
            let mut s = String::new();
            hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
    }
}
