//! HTTP/1.1 as vllamad speaks it to its engines, without I/O: a request written into one
//! buffer, a response head parsed by httparse, and the response body's framing (RFC 9112
//! §6.3: none, `Content-Length`, chunked, or until the engine closes) taken from the front
//! of the read buffer as frames that share its memory.
//!
//! The peer is an engine vllamad started (uvicorn) or a remote one behind a proxy: this is a
//! client for answers to requests vllamad wrote itself, not a general one — no request
//! bodies of unknown length, no `Expect`, no upgrades.

use std::mem::MaybeUninit;

use hyper::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE,
    TRANSFER_ENCODING,
};
use hyper::{HeaderMap, Method, StatusCode, Version};

pub(crate) use crate::h1::body::{Decoder, Framing, FramingError, Step};
use crate::h1::head;

/// The answer's headers that are kept: those that frame it, and those vllamad reads or
/// passes on (the relay's `Content-Type` and `Cache-Control`). `Date`, `Server` and the rest
/// are not read, and not built into the header map.
const KEPT: [HeaderName; 5] = [
    CONTENT_TYPE,
    CACHE_CONTROL,
    CONTENT_LENGTH,
    TRANSFER_ENCODING,
    CONNECTION,
];

/// The longest response head accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the engine's response head is malformed: {0}")]
    Head(#[from] httparse::Error),
    #[error("the engine's response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the engine's response has an invalid header {0}")]
    Header(String),
    #[error("the engine's response has an invalid Content-Length")]
    Length,
    #[error("the engine's answer: {0}")]
    Body(#[from] FramingError),
}

/// Writes a request's head, with `Content-Length` for a body of `body_len` bytes (none for
/// an empty body of a method that carries none).
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    head::write_fields(out, headers, &[CONTENT_LENGTH, TRANSFER_ENCODING]);
    let bodiless = matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if body_len > 0 || !bodiless {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head, and how its body is framed.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses the response head at the front of `buf`, skipping interim (1xx) responses:
/// `Ok(None)` while it is incomplete; else the head and how many bytes it took.
pub(crate) fn parse_head(buf: &[u8], method: &Method) -> Result<Option<(usize, Head)>, WireError> {
    let mut at = 0;
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf.get(at..).unwrap_or_default(),
            &mut fields,
        )? {
            httparse::Status::Partial if buf.len() > MAX_HEAD => {
                return Err(WireError::HeadTooLarge)
            }
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(len) => len,
        };
        let code = response.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| WireError::Header(format!("status {code}")))?;
        if status.is_informational() {
            at += len;
            continue;
        }
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let mut headers = HeaderMap::new();
        for field in response.headers.iter() {
            let Some(name) = KEPT
                .iter()
                .find(|kept| kept.as_str().eq_ignore_ascii_case(field.name))
            else {
                continue;
            };
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| WireError::Header(field.name.to_string()))?;
            headers.append(name.clone(), value);
        }
        let framing = framing(method, status, &headers)?;
        let keep_alive = framing != Framing::Close && head::persistent(version, &headers);
        let head = Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        };
        return Ok(Some((at + len, head)));
    }
}

/// RFC 9112 §6.3, for a response to `method`.
fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Framing, WireError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    // Chunked only when it is the last coding; any other runs to the close.
    if let Some(chunked) = head::transfer_chunked(headers) {
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(
        match head::content_length(headers).map_err(|_| WireError::Length)? {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(usize, Head)>, WireError> {
        parse_head(text.as_bytes(), &Method::POST)
    }

    fn framing_of(text: &str) -> Framing {
        head(text).unwrap().unwrap().1.framing
    }

    #[test]
    fn a_request_head_carries_its_headers_and_length() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("engine"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let mut out = Vec::new();
        write_head(
            &mut out,
            &Method::POST,
            "/v1/chat/completions",
            &headers,
            12,
        );
        assert_eq!(
            out,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: engine\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        write_head(&mut out, &Method::GET, "/health", &headers, 0);
        assert_eq!(out, b"GET /health HTTP/1.1\r\nhost: engine\r\n\r\n");
        out.clear();
        write_head(&mut out, &Method::POST, "/sleep", &HeaderMap::new(), 0);
        assert_eq!(out, b"POST /sleep HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn heads_are_read_whole_or_not_at_all() {
        let text = "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\nok";
        let (len, h) = head(text).unwrap().unwrap();
        assert_eq!(len, text.len() - 2);
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["content-type"], "application/json");
        assert!(h.headers.get("date").is_none(), "not read");
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        for cut in 0..len {
            assert!(head(&text[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        // Interim answers are skipped.
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (len, h) = head(text).unwrap().unwrap();
        assert_eq!(
            (len, h.status, h.framing),
            (text.len(), StatusCode::NO_CONTENT, Framing::Empty)
        );
        assert!(head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2")
            .unwrap()
            .is_none());
    }

    #[test]
    fn broken_or_oversized_heads_are_errors() {
        assert!(head("HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nbad header\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 099 Low\r\n\r\n").is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(head(&huge), Err(WireError::HeadTooLarge)));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "x: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(head(&many).is_err());
    }

    #[test]
    fn the_body_is_framed_as_rfc_9112_says() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\ncontent-length: 5\r\n\r\n"
            ),
            Framing::Chunked
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n"),
            Framing::Length(7)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n"),
            Framing::Length(7)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"),
            Framing::Empty
        );
        let (_, h) = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let (_, h) = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        for bad in [
            "7, 8",
            "-1",
            "+7",
            "",
            "0x7",
            "1 2",
            "99999999999999999999999",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(matches!(head(&text), Err(WireError::Length)), "{bad:?}");
        }
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n";
        assert!(matches!(head(text), Err(WireError::Length)));
    }

    #[test]
    fn connections_persist_as_their_version_and_connection_header_say() {
        let alive = |text: &str| head(text).unwrap().unwrap().1.keep_alive;
        assert!(alive("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!alive(
            "HTTP/1.1 200 OK\r\nconnection: upgrade, Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(alive(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
    }
}
