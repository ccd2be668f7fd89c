//! Reading an engine's Server-Sent Events stream (`data: {...}\n\n` … `data: [DONE]`).

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Data(Value),
    Done,
}

/// Pulls events from an engine's response body.
pub struct SseReader {
    body: Incoming,
    buf: BytesMut,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("the engine's stream broke off: {0}")]
    Body(String),
    #[error("the engine sent an event that is not JSON: {0}")]
    Json(String),
    #[error("the engine sent an event longer than {} MiB", MAX_EVENT >> 20)]
    TooLong,
}

/// An event longer than this is not one: the stream is failed rather than buffered on.
pub const MAX_EVENT: usize = 16 << 20;

impl SseReader {
    pub fn new(body: Incoming) -> Self {
        SseReader {
            body,
            buf: BytesMut::new(),
            done: false,
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
        return Some(
            serde_json::from_str(&data)
                .map(Event::Data)
                .map_err(|e| SseError::Json(e.to_string())),
        );
    }
}
