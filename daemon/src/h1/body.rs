//! A message body's framing (RFC 9112 §6.3) — none, `Content-Length`, chunked, or until the
//! peer closes — decoded from the front of a read buffer as frames that share its memory.
//! The server reads requests' bodies with it, the engine client its answers'.

use bytes::{Buf, Bytes, BytesMut};

/// The longest chunk-size or trailer line, and all trailer lines together.
const MAX_LINE: usize = 4 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("the chunked body is malformed: {0}")]
    Chunk(&'static str),
    #[error("the connection closed {0} bytes before the body's end")]
    Short(u64),
    #[error("the connection closed in the middle of a chunked body")]
    ChunkedCut,
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the peer closes the connection (which then carries nothing more).
    Close,
}

/// What the decoder took from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes (sharing the buffer's memory).
    Data(Bytes),
    /// Nothing until more bytes arrive.
    More,
    /// The body has ended; what follows in the buffer is not the body's.
    End,
}

/// Takes a message body (a request's or an answer's) out of the read buffer as its bytes
/// arrive.
#[derive(Debug)]
pub struct Decoder(State);

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
    pub fn new(framing: Framing) -> Decoder {
        Decoder(match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::Close => State::Close,
        })
    }

    pub fn is_done(&self) -> bool {
        self.0 == State::Done
    }

    /// The body's bytes still to come, when they are known.
    pub fn remaining(&self) -> Option<u64> {
        match self.0 {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, FramingError> {
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
                    let Some((len, used)) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(buf.get(..len).unwrap_or_default())?;
                    buf.advance(used);
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
                        Some(_) => return Err(FramingError::Chunk("no CRLF after a chunk")),
                    },
                    Some(_) => return Err(FramingError::Chunk("no CRLF after a chunk")),
                },
                State::Trailer(read) => {
                    let Some((len, used)) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    buf.advance(used);
                    if len == 0 {
                        self.0 = State::Done;
                        return Ok(Step::End);
                    }
                    let read = read + len;
                    if read > MAX_LINE {
                        return Err(FramingError::Chunk("trailers too long"));
                    }
                    self.0 = State::Trailer(read);
                }
            }
        }
    }

    /// The engine closed the connection: the end of a body that runs until then, an error
    /// for one that had more to come.
    pub fn eof(&mut self) -> Result<(), FramingError> {
        match self.0 {
            State::Close | State::Done => {
                self.0 = State::Done;
                Ok(())
            }
            State::Length(n) => Err(FramingError::Short(n)),
            _ => Err(FramingError::ChunkedCut),
        }
    }
}

/// The line at the front of `buf`, if it is all there: its length without its CR LF, and
/// its length with them. Read where it lies (a line split off the buffer cost a reference
/// count taken and dropped, for each chunk of a stream).
fn line(buf: &[u8]) -> Result<Option<(usize, usize)>, FramingError> {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_LINE {
            return Err(FramingError::Chunk("line too long"));
        }
        return Ok(None);
    };
    if end > MAX_LINE {
        return Err(FramingError::Chunk("line too long"));
    }
    let len = match end.checked_sub(1) {
        Some(cr) if buf.get(cr) == Some(&b'\r') => cr,
        _ => end,
    };
    Ok(Some((len, end + 1)))
}

/// A chunk-size line's size: hex digits, then optionally whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(FramingError::Chunk("bad chunk size"));
    }
    match line.get(digits) {
        None | Some(b';' | b' ' | b'\t') => {}
        Some(_) => return Err(FramingError::Chunk("bad chunk size")),
    }
    // At most 15 hex digits: 60 bits, no overflow.
    Ok(line
        .iter()
        .take(digits)
        .filter_map(|&b| char::from(b).to_digit(16))
        .fold(0, |size, digit| size << 4 | u64::from(digit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece `decode` gives for `wire` fed in pieces of `size` bytes, and whether the
    /// body ended (with `eof` after the last byte when it had not).
    fn decode_in_pieces(
        framing: Framing,
        wire: &[u8],
        size: usize,
    ) -> (Vec<u8>, Result<(), FramingError>) {
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
                    Err(e) => return (body, Err(e)),
                }
            }
        }
        (body, decoder.eof())
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
    fn chunk_sizes_read_in_either_case_and_lines_end_in_lf_or_crlf() {
        let a = "a".repeat(0x1a);
        let b = "b".repeat(0xff);
        let wire = format!("1a\r\n{a}\r\n00fF;ext=1\n{b}\n0\nx-t: 1\r\n\n");
        for cut in [1, 3, wire.len()] {
            let (got, ended) = decode_in_pieces(Framing::Chunked, wire.as_bytes(), cut);
            assert_eq!(ended, Ok(()), "cut {cut}");
            assert_eq!(got, format!("{a}{b}").into_bytes(), "cut {cut}");
        }
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
        assert_eq!(
            (got, ended),
            (b"ab".to_vec(), Err(FramingError::ChunkedCut))
        );
    }

    #[test]
    fn length_and_close_bodies_end_where_they_should() {
        let (got, ended) = decode_in_pieces(Framing::Length(5), b"hello, and more", 2);
        assert_eq!((got, ended), (b"hello".to_vec(), Ok(())));
        let (got, ended) = decode_in_pieces(Framing::Length(10), b"hello", 2);
        assert_eq!(
            (got, ended),
            (b"hello".to_vec(), Err(FramingError::Short(5)))
        );
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
