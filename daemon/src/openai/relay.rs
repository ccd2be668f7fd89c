//! The engine's answer relayed to the client byte for byte, holding the model's lease until
//! its last byte. On the way it notes the first token, the token counts, a Responses id (for
//! `GET /v1/responses/{id}`) and whether an event stream ended as its route's streams end;
//! one that did not gets a last error event in the route's dialect instead of a cut stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::header::CONTENT_TYPE;
use hyper::Response;

use super::dialect::Dialect;
use super::responses::{IdScan, ResponseIds};
use super::usage::UsageScan;
use crate::engine::EngineBody;
use crate::http::{self, Body};
use crate::needle::Needle;
use crate::scheduler::Lease;
use crate::stall::Stall;
use std::future::Future;

/// What the relay watches for, per route.
pub struct Watch {
    pub dialect: Dialect,
    /// The events that end a whole stream, and their name.
    pub ends: (&'static [Needle], &'static str),
    /// Where Responses ids are noted (when the engines keep responses).
    pub ids: Option<Arc<ResponseIds>>,
    /// An event stream that goes quiet this long fails (`engine.stall_timeout`).
    pub stall: Option<Stall>,
}

pub fn relay(resp: Response<EngineBody>, lease: Lease, watch: Watch) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let ids = watch.ids.map(|store| (store, IdScan::default()));
    let stall = watch.stall.filter(|_| sse).map(|s| {
        let timer = Box::pin(tokio::time::sleep(s.after));
        (s, timer)
    });
    let mut out = Response::new(
        LeasedBody {
            inner: Some(body),
            lease: Some(lease),
            observed: crate::observe::current(),
            saw_first: false,
            sse,
            finished: false,
            end: Marker::new(watch.ends.0),
            end_name: watch.ends.1,
            dialect: watch.dialect,
            usage: UsageScan::default(),
            ids,
            stall,
        }
        .boxed(),
    );
    *out.status_mut() = parts.status;
    for name in [CONTENT_TYPE, hyper::header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The longest end marker, in bytes (a frame's last bytes are kept, this many less one).
const MAX_NEEDLE: usize = 48;

/// Finds any of a few short needles in a byte stream, across frame boundaries, without
/// allocating: the end of the previous frame is kept in a fixed buffer.
#[derive(Debug)]
pub(crate) struct Marker {
    needles: &'static [Needle],
    /// The last `keep` bytes seen (fewer at the start).
    tail: [u8; MAX_NEEDLE],
    tail_len: usize,
    keep: usize,
    seen: bool,
}

impl Marker {
    pub(crate) fn new(needles: &'static [Needle]) -> Marker {
        let longest = needles.iter().map(Needle::len).max().unwrap_or(1);
        Marker {
            needles,
            tail: [0; MAX_NEEDLE],
            tail_len: 0,
            keep: longest.clamp(1, MAX_NEEDLE) - 1,
            seen: false,
        }
    }

    pub(crate) fn seen(&self) -> bool {
        self.seen
    }

    fn found(&self, hay: &[u8]) -> bool {
        self.needles.iter().any(|n| n.find(hay).is_some())
    }

    // Fixed-size copies on the per-frame path, in bounds by construction (`tail_len <= keep
    // < MAX_NEEDLE`, `head <= keep`, `from_tail <= tail_len`, `from_data <= data.len()`) and
    // fuzzed against a plain search of the whole stream (the fuzz's "engine event streams"):
    // indexing kept, the lint allowed here alone.
    #[allow(clippy::indexing_slicing)]
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if self.seen {
            return;
        }
        // A needle split between the previous frame and this one lies in the old tail plus
        // this frame's first bytes.
        let head = data.len().min(self.keep);
        let mut joined = [0u8; 2 * MAX_NEEDLE];
        joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        joined[self.tail_len..self.tail_len + head].copy_from_slice(&data[..head]);
        if self.found(&joined[..self.tail_len + head]) || self.found(data) {
            self.seen = true;
            return;
        }
        // The new tail: the last `keep` bytes of (old tail + data).
        let total = self.tail_len + data.len();
        let new_len = total.min(self.keep);
        let mut next = [0u8; MAX_NEEDLE];
        let from_data = new_len.min(data.len());
        let from_tail = new_len - from_data;
        next[..from_tail].copy_from_slice(&self.tail[self.tail_len - from_tail..self.tail_len]);
        next[from_tail..new_len].copy_from_slice(&data[data.len() - from_data..]);
        self.tail = next;
        self.tail_len = new_len;
    }
}

/// The engine's response body, holding the model's lease until it ends.
struct LeasedBody {
    /// `None` once handed to the drain (see `Drop`).
    inner: Option<EngineBody>,
    lease: Option<Lease>,
    /// The request, for its first token and its end (dropped with the body).
    observed: Option<Arc<crate::observe::Request>>,
    /// The first data frame was seen (its time is the request's first token).
    saw_first: bool,
    sse: bool,
    finished: bool,
    end: Marker,
    end_name: &'static str,
    dialect: Dialect,
    /// Token counts, from the response's `usage` object.
    usage: UsageScan,
    ids: Option<(Arc<ResponseIds>, IdScan)>,
    stall: Option<(Stall, Pin<Box<tokio::time::Sleep>>)>,
}

impl LeasedBody {
    fn error_event(&mut self, why: &str) -> Frame<Bytes> {
        let model = self
            .lease
            .take()
            .map(|l| l.model().to_string())
            .unwrap_or_default();
        tracing::error!(model, why, "engine stream broke off");
        Frame::data(self.dialect.break_event(&format!(
            "the engine for {model} stopped in the middle of the response: {why}"
        )))
    }

    /// The token counts of the usage object seen last, for the access line and metrics.
    fn record_tokens(&self) {
        if let (Some(r), Some(u)) = (&self.observed, self.usage.usage()) {
            r.tokens(u.prompt_tokens, u.completion_tokens);
        }
    }

    fn note(&mut self, data: &Bytes) {
        self.usage.feed(data);
        if let (Some((store, scan)), Some(lease)) = (&mut self.ids, &self.lease) {
            if let Some(id) = scan.feed(data) {
                store.insert(id, lease.model().clone());
            }
        }
        if self.sse {
            if !self.saw_first {
                self.saw_first = true;
                if let Some(r) = &self.observed {
                    r.first_token();
                }
            }
            self.end.feed(data);
        }
    }
}

impl hyper::body::Body for LeasedBody {
    type Data = Bytes;
    type Error = http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                let stalled = self
                    .stall
                    .as_mut()
                    .is_some_and(|(_, timer)| timer.as_mut().poll(cx).is_ready());
                if !stalled {
                    return Poll::Pending;
                }
                self.finished = true;
                let why = self
                    .stall
                    .as_ref()
                    .map(|(s, _)| s.fired())
                    .unwrap_or_default();
                let event = self.error_event(&why);
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.note(data);
                }
                if let Some((stall, timer)) = self.stall.as_mut() {
                    let next = tokio::time::Instant::now() + stall.after;
                    timer.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                if self.sse && !self.end.seen() {
                    let why = format!("its stream ended without {}", self.end_name);
                    let event = self.error_event(&why);
                    return Poll::Ready(Some(Ok(event)));
                }
                self.record_tokens();
                self.lease = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                if self.sse {
                    Poll::Ready(Some(Ok(self.error_event(&e.to_string()))))
                } else {
                    self.lease = None;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            }
        }
    }

    /// The engine's length, when it gave one: the client gets it as `Content-Length`, as
    /// from the engine itself, not the chunked encoding (whose end a client learns only
    /// from the last chunk: `vllamactl bench`'s hyper client woke a second thread for it).
    /// An event stream has none: a broken one gets an error event added.
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if !self.sse && !self.finished => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for LeasedBody {
    /// A client that stops reading at a stream's last event (`data: [DONE]`: the SDKs do)
    /// leaves the engine's body a few bytes short of its end — the chunked encoding's last
    /// chunk. Dropping it would close the pooled engine connection (the engine then gets
    /// EPIPE, and the next request pays a new connection): read those last bytes instead,
    /// briefly, so the connection goes back to the pool.
    fn drop(&mut self) {
        if self.finished || !(self.sse && self.end.seen()) {
            return;
        }
        // The usage object comes before the end marker: counted though the body's end was
        // not read.
        self.record_tokens();
        if let Some(rest) = self.inner.take() {
            rest.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_across_frames() {
        static ENDS: [Needle; 2] = [
            Needle::new(b"\"type\":\"message_stop\""),
            Needle::new(b"data: [DONE]"),
        ];
        let stream = b"event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        for size in 1..stream.len() {
            let mut m = Marker::new(&ENDS);
            for chunk in stream.chunks(size) {
                m.feed(chunk);
            }
            assert!(m.seen, "frames of {size}");
        }
        // A recorded Responses stream ends; the same without its last event does not.
        let (ends, _) = super::super::dialect::stream_end("/v1/responses");
        let recorded = include_bytes!("../../../tests/fixtures/real-vllm/responses-stream.sse");
        let cut =
            &recorded[..memchr::memmem::rfind(recorded, b"event: response.completed").unwrap()];
        for size in [1, 7, 64, 1000, recorded.len()] {
            for (body, want) in [(&recorded[..], true), (cut, false)] {
                let mut m = Marker::new(ends);
                for chunk in body.chunks(size) {
                    m.feed(chunk);
                }
                assert_eq!(m.seen, want, "frames of {size}");
            }
        }
        let mut m = Marker::new(&ENDS);
        m.feed(b"data: {\"type\":\"message_delta\"}\n\n");
        m.feed(b"data: {\"text\":\"message_stop\"}");
        assert!(!m.seen, "the word alone is no end");
    }
}
