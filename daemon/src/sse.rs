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

/// Pulls events from an engine's response body. Whole events are taken from the front of
/// the frame they came in, without a copy (an engine writes an event, or several, a frame);
/// only an event split between frames is gathered in a buffer.
pub struct SseReader<B = EngineBody> {
    body: B,
    /// The frame being read, when no split event is being gathered.
    frame: Bytes,
    /// A split event, gathered from the frames it came in (and what followed it).
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
    /// Done with the stream after its `[DONE]`: the body's end read, so that the engine's
    /// connection is kept (see [`EngineBody::finish`]).
    pub async fn finish(self) {
        if !self.done {
            self.body.finish().await;
        }
    }
}

impl<B> SseReader<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Self {
        SseReader {
            body,
            frame: Bytes::new(),
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Event, SseError>> {
        loop {
            if self.buf.is_empty() {
                if let Some(event) = take_event_from(&mut self.frame) {
                    return Some(Ok(event));
                }
                if !self.frame.is_empty() {
                    // the frame ends inside an event: it is gathered from here on
                    self.buf.extend_from_slice(&self.frame);
                    self.frame.clear();
                }
            } else if let Some(event) = take_event(&mut self.buf) {
                return Some(Ok(event));
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
                        if self.buf.is_empty() {
                            self.frame = data;
                        } else {
                            self.buf.extend_from_slice(&data);
                        }
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
pub fn take_event(buf: &mut BytesMut) -> Option<Event> {
    loop {
        let end = blank_line(buf)?;
        let raw = buf.split_to(end).freeze();
        buf.advance(2);
        if let Some(event) = event_of(raw) {
            return Some(event);
        }
    }
}

/// The same, from a frame: the event is a slice of it, not a copy.
fn take_event_from(frame: &mut Bytes) -> Option<Event> {
    loop {
        let end = blank_line(frame)?;
        let raw = frame.split_to(end);
        frame.advance(2);
        if let Some(event) = event_of(raw) {
            return Some(event);
        }
    }
}

/// Where the blank line that ends the first event begins.
fn blank_line(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find(|&at| buf.get(at + 1) == Some(&b'\n'))
}

/// What one event's text holds; `None` for a comment or keep-alive.
fn event_of(raw: Bytes) -> Option<Event> {
    // The engines' every event: one `data:` line, taken where it lies.
    if let Some(event) = one_line(&raw) {
        return Some(event);
    }
    let text = String::from_utf8_lossy(&raw);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    if data.is_empty() {
        return None;
    }
    if data == "[DONE]" {
        return Some(Event::Done);
    }
    Some(Event::Data(Bytes::from(data)))
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
            .map(Ok)
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

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    fn read_all(frames: Vec<Bytes>) -> Vec<Result<Event, String>> {
        let mut reader = SseReader::new(Frames(frames.into()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut out = Vec::new();
            while let Some(e) = reader.next().await {
                out.push(e.map_err(|e| e.to_string()));
            }
            out
        })
    }

    #[test]
    fn events_read_the_same_however_the_frames_cut_them() {
        let stream = std::fs::read(format!(
            "{}/../tests/fixtures/real-vllm/chat-tool-call-stream.sse",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut odd = stream.clone();
        odd.extend_from_slice(b": ping\n\nevent: x\ndata: {\"c\":\ndata: 3}\n\ndata: [DONE]\n\n");
        for stream in [stream, odd] {
            let whole = events(&stream);
            assert!(whole.len() > 10);
            assert_eq!(read_all(vec![Bytes::from(stream.clone())]), whole);
            // a byte a frame
            let bytes = stream
                .iter()
                .map(|b| Bytes::copy_from_slice(&[*b]))
                .collect();
            assert_eq!(read_all(bytes), whole);
            // an event a frame, and every cut in two
            let by_event = stream
                .split_inclusive(|b| *b == b'\n')
                .map(Bytes::copy_from_slice)
                .collect();
            assert_eq!(read_all(by_event), whole);
            for cut in (0..stream.len()).step_by(7) {
                let (a, b) = stream.split_at(cut);
                let frames = vec![Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
                assert_eq!(read_all(frames), whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn an_unfinished_event_waits_for_its_end() {
        let mut buf = BytesMut::from(&b"data: {\"a\":"[..]);
        assert!(take_event(&mut buf).is_none());
        buf.extend_from_slice(b"1}\n\n");
        assert_eq!(take_event(&mut buf), Some(data(r#"{"a":1}"#)));
        assert!(buf.is_empty());
    }
}
