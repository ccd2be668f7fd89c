//! Request heads read and response heads written.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING,
};
use hyper::{HeaderMap, Method, StatusCode, Uri, Version};

use super::body::Framing;

/// The longest request head (hyper's: 8 KiB and 4 KiB for each of 100 header fields).
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields in a request head.
const MAX_HEADERS: usize = 100;
/// The longest request target.
const MAX_TARGET: usize = 65_534;

/// A request head, read.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client allows another request on this connection after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Where one field lies in the head: name and value as offsets into it.
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Reads the request head at the front of `buf` and takes it out: `Ok(None)` while it is
/// incomplete, else the head; a broken or oversized head is the status to refuse it with.
pub(crate) fn read_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, StatusCode> {
    // Uninitialized: 100 fields zeroed for every request cost more than reading them.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    if len > MAX_HEAD {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| (part.as_ptr() as usize - base, part.len());
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let target = at(request.path.unwrap_or("").as_bytes());
    if target.1 > MAX_TARGET {
        return Err(StatusCode::URI_TOO_LONG);
    }
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let spans: Vec<Field> = request
        .headers
        .iter()
        .map(|field| Field {
            name: at(field.name.as_bytes()),
            value: at(field.value),
        })
        .collect();
    // The head's bytes, shared by the target and the header values (no copies).
    let head = buf.split_to(len).freeze();
    let slice = |(from, len): (usize, usize)| head.slice(from..from + len);
    let uri = Uri::from_maybe_shared(slice(target)).map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in &spans {
        let name = head
            .get(span.name.0..span.name.0 + span.name.1)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(StatusCode::BAD_REQUEST)?;
        let value = HeaderValue::from_maybe_shared(slice(span.value))
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        headers.append(name, value);
    }
    let framing = request_framing(version, &headers)?;
    let keep_alive = persistent(version, &headers);
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// RFC 9112 §6.3 for a request. A request with both `Transfer-Encoding` and
/// `Content-Length` is refused (the two framings disagreeing is how requests are smuggled
/// past proxies), as is one whose transfer coding does not end in chunked.
fn request_framing(version: Version, headers: &HeaderMap) -> Result<Framing, StatusCode> {
    if let Some(chunked) = transfer_chunked(headers) {
        if !chunked || version == Version::HTTP_10 || headers.contains_key(CONTENT_LENGTH) {
            return Err(StatusCode::BAD_REQUEST);
        }
        return Ok(Framing::Chunked);
    }
    match content_length(headers) {
        Ok(None | Some(0)) => Ok(Framing::Empty),
        Ok(Some(n)) => Ok(Framing::Length(n)),
        Err(InvalidLength) => Err(StatusCode::BAD_REQUEST),
    }
}

/// Whether a message's last transfer coding is chunked; `None` when it has none.
pub(crate) fn transfer_chunked(headers: &HeaderMap) -> Option<bool> {
    let last = headers.get_all(TRANSFER_ENCODING).iter().next_back()?;
    let coding = last
        .as_bytes()
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default();
    Some(coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// `Content-Length` missing, invalid, or given twice with two values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InvalidLength;

/// A message's `Content-Length`: every value (and every item of a list) must be the same
/// decimal number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidLength> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(InvalidLength);
            }
            let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|seen| seen != n) {
                return Err(InvalidLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether a connection stays open after a message (RFC 9112 §9.3): HTTP/1.1 unless it says
/// `close`, HTTP/1.0 only when it says `keep-alive`.
pub(crate) fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let (close, keep) = connection_options(headers);
    !close && (version == Version::HTTP_11 || keep)
}

/// Whether the `Connection` header says `close`, and whether it says `keep-alive`.
pub(crate) fn connection_options(headers: &HeaderMap) -> (bool, bool) {
    let (mut close, mut keep) = (false, false);
    for value in headers.get_all(CONNECTION) {
        for option in value.as_bytes().split(|b| *b == b',') {
            let option = option.trim_ascii();
            close |= option.eq_ignore_ascii_case(b"close");
            keep |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    (close, keep)
}

/// How a response's body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sending {
    /// No body (a HEAD request, 1xx, 204, 304): a known length is still announced.
    Nothing(Option<u64>),
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// Writes a response head: the handler's headers, `date`, the framing and the connection's
/// fate (`close` when it ends, `keep-alive` to an HTTP/1.0 client that asked for it).
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    sending: Sending,
    keep_alive: bool,
    version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(
        out,
        headers,
        &[CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION],
    );
    match sending {
        Sending::Length(n) | Sending::Nothing(Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Sending::Nothing(None) | Sending::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"date: ");
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes `headers` as header lines, all but those named in `framing` (the writer sets those
/// itself).
pub(crate) fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap, framing: &[HeaderName]) {
    for (name, value) in headers {
        if framing.contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A head for a request refused before any handler saw it.
pub(crate) fn write_refusal(out: &mut Vec<u8>, status: StatusCode) {
    write_response(
        out,
        status,
        &HeaderMap::new(),
        Sending::Length(0),
        false,
        Version::HTTP_11,
    );
}

/// The current time as `date` wants it (IMF-fixdate), formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cache.1.as_bytes());
    });
}

/// A chunk's size line.
pub(crate) fn chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        if let (Some(slot), Some(&digit)) = (digits.get_mut(at), HEX.get(n & 15)) {
            *slot = digit;
        }
        n >>= 4;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Option<RequestHead>, StatusCode> {
        read_request(&mut BytesMut::from(text.as_bytes()))
    }

    #[test]
    fn a_head_is_read_whole_or_not_at_all() {
        let text = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello";
        let mut buf = BytesMut::from(text.as_bytes());
        let head = read_request(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"hello", "the body stays");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/v1/chat/completions");
        assert_eq!(head.uri.query(), Some("x=1"));
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.framing, Framing::Length(5));
        assert_eq!(head.headers["host"], "localhost");
        let both: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(both, ["1", "2"]);
        assert!(head.keep_alive && !head.expect_continue);
        let head_len = text.len() - 5;
        for cut in 0..head_len {
            assert!(read(&text[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn broken_and_oversized_heads_are_refused_as_hyper_refused_them() {
        assert_eq!(
            read("\x00\x01NOT HTTP\r\n\r\n").unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            read("GET / HTTP/1.1\r\nbad header\r\n\r\n").unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
        assert_eq!(
            read(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            read(&huge).unwrap_err(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        assert_eq!(read(&long).unwrap_err(), StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn bodies_are_framed_and_smuggling_shapes_refused() {
        let framing = |extra: &str| {
            read(&format!("POST / HTTP/1.1\r\n{extra}\r\n")).map(|h| h.unwrap().framing)
        };
        assert_eq!(framing(""), Ok(Framing::Empty));
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(Framing::Empty));
        assert_eq!(
            framing("Content-Length: 7\r\nContent-Length: 7\r\n"),
            Ok(Framing::Length(7))
        );
        assert_eq!(
            framing("Transfer-Encoding: gzip, chunked\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "Content-Length: 7\r\nContent-Length: 8\r\n",
            "Content-Length: 7, 8\r\n",
            "Content-Length: +7\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 7\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
        ] {
            assert_eq!(framing(bad), Err(StatusCode::BAD_REQUEST), "{bad:?}");
        }
        let old = read("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(old.unwrap_err(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn keep_alive_and_expectations_follow_the_version_and_headers() {
        let head = |text: &str| read(text).unwrap().unwrap();
        assert!(!head("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(
            !head("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }

    #[test]
    fn response_heads_carry_framing_date_and_the_connections_fate() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let mut out = Vec::new();
        write_response(
            &mut out,
            StatusCode::OK,
            &headers,
            Sending::Length(12),
            true,
            Version::HTTP_11,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\ndate: "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(" GMT\r\n\r\n") && !text.contains("connection"),
            "{text}"
        );
        out.clear();
        write_response(
            &mut out,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Sending::Chunked,
            false,
            Version::HTTP_11,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with(
                "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
            ),
            "{text}"
        );
        out.clear();
        write_response(
            &mut out,
            StatusCode::OK,
            &HeaderMap::new(),
            Sending::UntilClose,
            true,
            Version::HTTP_10,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("connection: keep-alive\r\n"));
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (n, want) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (0x2a4, "2a4\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
