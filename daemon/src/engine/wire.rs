//! HTTP/1.1 as vllamad speaks it to its engines, without I/O: a request written into one
//! buffer, a response head parsed by httparse, and the response body's framing (RFC 9112
//! §6.3: none, `Content-Length`, chunked, or until the engine closes) taken from the front
//! of the read buffer as frames that share its memory.
//!
//! The peer is an engine vllamad started (uvicorn) or a remote one behind a proxy: this is a
//! client for answers to requests vllamad wrote itself, not a general one — no request
//! bodies of unknown length, no `Expect`, no upgrades.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, StatusCode, Version};

/// The longest response head accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line, and all trailer lines together.
const MAX_LINE: usize = 4 * 1024;

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
    #[error("the engine's chunked body is malformed: {0}")]
    Chunk(&'static str),
    #[error("the engine closed the connection {0} bytes before the body's end")]
    Short(u64),
    #[error("the engine closed the connection in the middle of a chunked body")]
    ChunkedCut,
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
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
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

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the engine closes the connection (which then cannot carry another request).
    Close,
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
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(buf.get(at..).unwrap_or_default())? {
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
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| WireError::Header(field.name.to_string()))?;
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| WireError::Header(field.name.to_string()))?;
            headers.append(name, value);
        }
        let framing = framing(method, status, &headers)?;
        let keep_alive = framing != Framing::Close && persistent(version, &headers);
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
    if headers.contains_key(TRANSFER_ENCODING) {
        // Chunked only when it is the last coding; anything else runs to the close.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| WireError::Length)?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WireError::Length);
            }
            let n: u64 = item.parse().map_err(|_| WireError::Length)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(WireError::Length);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Whether the connection stays open after the response (RFC 9112 §9.3).
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep = false;
    for value in headers.get_all(CONNECTION) {
        for option in value.to_str().unwrap_or("").split(',').map(str::trim) {
            close |= option.eq_ignore_ascii_case("close");
            keep |= option.eq_ignore_ascii_case("keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep)
}

/// What the decoder took from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Body bytes (sharing the buffer's memory).
    Data(Bytes),
    /// Nothing until more bytes arrive.
    More,
    /// The body has ended; what follows in the buffer is not the body's.
    End,
}

/// Takes a response body out of the read buffer as its bytes arrive.
#[derive(Debug)]
pub(crate) struct Decoder(State);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    /// Chunked: expecting a chunk-size line.
    Size,
    /// Chunked: this many bytes of the chunk to come.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: the trailer section, and how many of its bytes were read.
    Trailer(usize),
    Done,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Decoder {
        Decoder(match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::Close => State::Close,
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.0 == State::Done
    }

    /// The body's bytes still to come, when they are known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.0 {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, WireError> {
        loop {
            match self.0 {
                State::Done => return Ok(Step::End),
                State::Length(left) | State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let rest = left - take as u64;
                    self.0 = match (self.0, rest) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(rest),
                        (_, 0) => State::DataEnd,
                        _ => State::Data(rest),
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                State::Size => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&line)?;
                    self.0 = if size == 0 {
                        State::Trailer(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::DataEnd => match buf.first() {
                    None => return Ok(Step::More),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.0 = State::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::More),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.0 = State::Size;
                        }
                        Some(_) => return Err(WireError::Chunk("no CRLF after a chunk")),
                    },
                    Some(_) => return Err(WireError::Chunk("no CRLF after a chunk")),
                },
                State::Trailer(read) => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    if line.is_empty() {
                        self.0 = State::Done;
                        return Ok(Step::End);
                    }
                    let read = read + line.len();
                    if read > MAX_LINE {
                        return Err(WireError::Chunk("trailers too long"));
                    }
                    self.0 = State::Trailer(read);
                }
            }
        }
    }

    /// The engine closed the connection: the end of a body that runs until then, an error
    /// for one that had more to come.
    pub(crate) fn eof(&mut self) -> Result<(), WireError> {
        match self.0 {
            State::Close | State::Done => {
                self.0 = State::Done;
                Ok(())
            }
            State::Length(n) => Err(WireError::Short(n)),
            _ => Err(WireError::ChunkedCut),
        }
    }
}

/// Takes one line (up to LF, without its CR LF) from the front of `buf`, if it is all there.
fn line(buf: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_LINE {
            return Err(WireError::Chunk("line too long"));
        }
        return Ok(None);
    };
    if end > MAX_LINE {
        return Err(WireError::Chunk("line too long"));
    }
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line))
}

/// A chunk-size line's size: hex digits, then optionally whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(WireError::Chunk("bad chunk size"));
    }
    match line.get(digits) {
        None | Some(b';' | b' ' | b'\t') => {}
        Some(_) => return Err(WireError::Chunk("bad chunk size")),
    }
    let text = std::str::from_utf8(line.get(..digits).unwrap_or_default())
        .map_err(|_| WireError::Chunk("bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| WireError::Chunk("bad chunk size"))
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

    /// Every piece `decode` gives for `wire` fed in pieces of `size` bytes, and whether the
    /// body ended (with `eof` after the last byte when it had not).
    fn decode_in_pieces(
        framing: Framing,
        wire: &[u8],
        size: usize,
    ) -> (Vec<u8>, Result<(), String>) {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in wire.chunks(size.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Step::Data(d)) => body.extend_from_slice(&d),
                    Ok(Step::More) => break,
                    Ok(Step::End) => return (body, Ok(())),
                    Err(e) => return (body, Err(e.to_string())),
                }
            }
        }
        (body, decoder.eof().map_err(|e| e.to_string()))
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

    /// `body` in chunked encoding, the chunks cut at `cut` bytes, with an extension and a
    /// trailer now and then.
    fn chunked(body: &[u8], cut: usize, extras: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in body.chunks(cut.max(1)).enumerate() {
            out.extend_from_slice(format!("{:X}", piece.len()).as_bytes());
            if extras && i % 2 == 1 {
                out.extend_from_slice(b" ;name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if extras {
            out.extend_from_slice(b"x-trailer: 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn chunked_bodies_decode_the_same_however_they_arrive() {
        let body: Vec<u8> = (0..700u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [1, 2, 15, 16, 100, 700, 1000] {
            for extras in [false, true] {
                let mut wire = chunked(&body, cut, extras);
                // What follows the body is not taken.
                wire.extend_from_slice(b"HTTP/1.1 200 OK");
                for size in [1, 2, 3, 7, 64, wire.len()] {
                    let (got, ended) = decode_in_pieces(Framing::Chunked, &wire, size);
                    assert_eq!(got, body, "chunks of {cut}, pieces of {size}");
                    assert_eq!(ended, Ok(()), "chunks of {cut}, pieces of {size}");
                }
                let mut decoder = Decoder::new(Framing::Chunked);
                let mut buf = BytesMut::from(&wire[..]);
                while decoder.decode(&mut buf).unwrap() != Step::End {}
                assert_eq!(&buf[..], b"HTTP/1.1 200 OK");
            }
        }
        // LF alone ends lines too, as most servers accept.
        let (got, ended) = decode_in_pieces(Framing::Chunked, b"3\nabc\n0\n\n", 1);
        assert_eq!((got, ended), (b"abc".to_vec(), Ok(())));
    }

    #[test]
    fn malformed_or_cut_chunked_bodies_fail() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"3x\r\nabc\r\n",
            b"3\r\nabcd\r\n",
            b"3\r\nabc\rx",
            b"1000000000000000\r\n",
        ] {
            let (_, ended) = decode_in_pieces(Framing::Chunked, bad, bad.len());
            assert!(ended.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("{}\r\n", "0".repeat(MAX_LINE + 1));
        assert!(decode_in_pieces(Framing::Chunked, long.as_bytes(), 64)
            .1
            .is_err());
        let trailers = format!("0\r\n{}\r\n", "x: y\r\n".repeat(MAX_LINE));
        assert!(decode_in_pieces(Framing::Chunked, trailers.as_bytes(), 64)
            .1
            .is_err());
        let (got, ended) = decode_in_pieces(Framing::Chunked, b"5\r\nab", 1);
        assert_eq!(got, b"ab");
        assert!(ended.is_err());
    }

    #[test]
    fn length_and_close_bodies_end_where_they_should() {
        let (got, ended) = decode_in_pieces(Framing::Length(5), b"hello, and more", 2);
        assert_eq!((got, ended), (b"hello".to_vec(), Ok(())));
        let (got, ended) = decode_in_pieces(Framing::Length(10), b"hello", 2);
        assert_eq!(got, b"hello");
        assert_eq!(ended, Err(WireError::Short(5).to_string()));
        let (got, ended) = decode_in_pieces(Framing::Close, b"until the end", 4);
        assert_eq!((got, ended), (b"until the end".to_vec(), Ok(())));
        let mut empty = Decoder::new(Framing::Empty);
        assert!(empty.is_done());
        assert_eq!(
            empty.decode(&mut BytesMut::from(&b"next"[..])).unwrap(),
            Step::End
        );
        assert_eq!(Decoder::new(Framing::Length(9)).remaining(), Some(9));
    }
}
