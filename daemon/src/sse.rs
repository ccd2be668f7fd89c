//! Reading an engine's Server-Sent Events stream (`data: {...}\n\n` … `data: [DONE]`).
//! Events come out as their data's bytes: what they hold is for the reader to parse, into
//! whatever types it wants.

use crate::engine::EngineBody;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The event's data: its `data:` lines joined by newlines.
    Data(Bytes),
    Done,
}

/// Pulls events from an engine's response body.
pub struct SseReader {
    body: EngineBody,
    buf: BytesMut,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("the engine's stream broke off: {0}")]
    Body(String),
    #[error("the engine sent an event longer than {} MiB", MAX_EVENT >> 20)]
    TooLong,
}

/// An event longer than this is not one: the stream is failed rather than buffered on.
pub const MAX_EVENT: usize = 16 << 20;

impl SseReader {
    pub fn new(body: EngineBody) -> Self {
        SseReader {
            body,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// Done with the stream after its `[DONE]`: the body's end read, so that the engine's
    /// connection is kept (see [`EngineBody::finish`]).
    pub async fn finish(self) {
        if !self.done {
            self.body.finish().await;
        }
    }

    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Event, SseError>> {
        loop {
            if let Some(event) = take_event(&mut self.buf) {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if self.buf.len() > MAX_EVENT {
                self.done = true;
                self.buf.clear();
                return Some(Err(SseError::TooLong));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(SseError::Body(e.to_string())));
                }
                None => self.done = true,
            }
        }
    }
}

/// The next whole event in `buf` (taken out of it), if there is one.
pub fn take_event(buf: &mut BytesMut) -> Option<Result<Event, SseError>> {
    loop {
        let end = memchr::memmem::find(buf, b"\n\n")?;
        let raw = buf.split_to(end);
        buf.advance(2);
        // The engines' every event: one `data:` line, taken where it lies.
        let raw = raw.freeze();
        if let Some(event) = one_line(&raw) {
            return Some(Ok(event));
        }
        let text = String::from_utf8_lossy(&raw);
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() {
            continue; // a comment or keep-alive
        }
        if data == "[DONE]" {
            return Some(Ok(Event::Done));
        }
        return Some(Ok(Event::Data(Bytes::from(data))));
    }
}

/// An event of a single `data:` line of UTF-8 (`None`: anything else, which the general
/// path reads: several lines, comments, bytes that are not UTF-8).
fn one_line(raw: &Bytes) -> Option<Event> {
    let data = raw.strip_prefix(b"data:")?;
    if memchr::memchr(b'\n', data).is_some() {
        return None;
    }
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        return Some(Event::Done);
    }
    if data.is_empty() || std::str::from_utf8(data).is_err() {
        return None;
    }
    Some(Event::Data(raw.slice_ref(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Event {
        Event::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn events(stream: &[u8]) -> Vec<Result<Event, String>> {
        let mut buf = BytesMut::from(stream);
        std::iter::from_fn(|| take_event(&mut buf))
            .map(|e| e.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn events_are_read_as_the_engines_write_them_and_as_the_spec_allows() {
        let stream = b"data: {\"a\":1}\n\n\
            data:{\"b\":2}\r\n\n\
            : a comment\n\n\
            event: x\ndata: {\"c\":\ndata: 3}\n\n\
            data: {\"d\":\"\xff\"}\n\n\
            data: not json\n\n\
            data: [DONE]\n\n\
            data: {\"rest\":";
        assert_eq!(
            events(stream),
            vec![
                Ok(data(r#"{"a":1}"#)),
                Ok(data(r#"{"b":2}"#)),
                // Several data lines are one value, joined by newlines.
                Ok(data("{\"c\":\n3}")),
                // Bytes that are not UTF-8 are replaced, not fatal.
                Ok(data("{\"d\":\"\u{fffd}\"}")),
                // What the data holds is for the reader to judge.
                Ok(data("not json")),
                Ok(Event::Done),
            ]
        );
    }

    #[test]
    fn an_unfinished_event_waits_for_its_end() {
        let mut buf = BytesMut::from(&b"data: {\"a\":"[..]);
        assert!(take_event(&mut buf).is_none());
        buf.extend_from_slice(b"1}\n\n");
        assert_eq!(take_event(&mut buf).unwrap().unwrap(), data(r#"{"a":1}"#));
        assert!(buf.is_empty());
    }
}
