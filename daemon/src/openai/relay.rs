//! The engine's answer relayed to the client byte for byte, holding the model's lease until
//! its last byte. On the way it notes the first token, the token counts, a Responses id (for
//! `GET /v1/responses/{id}`) and whether an event stream ended as its route's streams end;
//! one that did not gets a last error event in the route's dialect instead of a cut stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::Response;

use super::dialect::Dialect;
use super::responses::{IdScan, ResponseIds};
use super::usage::UsageScan;
use crate::http::{self, Body};
use crate::scheduler::Lease;

/// What the relay watches for, per route.
pub struct Watch {
    pub dialect: Dialect,
    /// The events that end a whole stream, and their name.
    pub ends: (&'static [&'static [u8]], &'static str),
    /// Where Responses ids are noted (when the engines keep responses).
    pub ids: Option<Arc<ResponseIds>>,
}

pub fn relay(resp: Response<Incoming>, lease: Lease, watch: Watch) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let ids = watch.ids.map(|store| (store, IdScan::default()));
    let mut out = Response::new(
        LeasedBody {
            inner: body,
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

/// Finds any of a few short needles in a byte stream, across frame boundaries.
#[derive(Debug)]
struct Marker {
    needles: &'static [&'static [u8]],
    /// The end of the previous frame, as long as the longest needle less one.
    tail: Vec<u8>,
    seen: bool,
}

impl Marker {
    fn new(needles: &'static [&'static [u8]]) -> Marker {
        Marker {
            needles,
            tail: Vec::new(),
            seen: false,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        if self.seen {
            return;
        }
        let keep = self.needles.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
        let found = |hay: &[u8]| {
            self.needles
                .iter()
                .any(|n| memchr::memmem::find(hay, n).is_some())
        };
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(&data[..data.len().min(keep)]);
        if found(&joined) || found(data) {
            self.seen = true;
            return;
        }
        if data.len() >= keep {
            self.tail = data[data.len() - keep..].to_vec();
        } else {
            let excess = joined.len().saturating_sub(keep);
            joined.drain(..excess);
            self.tail = joined;
        }
    }
}

/// The engine's response body, holding the model's lease until it ends.
struct LeasedBody {
    inner: Incoming,
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
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.note(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                if self.sse && !self.end.seen {
                    let why = format!("its stream ended without {}", self.end_name);
                    let event = self.error_event(&why);
                    return Poll::Ready(Some(Ok(event)));
                }
                if let (Some(r), Some(u)) = (&self.observed, self.usage.usage()) {
                    r.tokens(u.prompt_tokens, u.completion_tokens);
                }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_across_frames() {
        const ENDS: &[&[u8]] = &[b"\"type\":\"message_stop\"", b"data: [DONE]"];
        let stream = b"event: message_delta\ndata: {}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        for size in 1..stream.len() {
            let mut m = Marker::new(ENDS);
            for chunk in stream.chunks(size) {
                m.feed(chunk);
            }
            assert!(m.seen, "frames of {size}");
        }
        let mut m = Marker::new(ENDS);
        m.feed(b"data: {\"type\":\"message_delta\"}\n\n");
        m.feed(b"data: {\"text\":\"message_stop\"}");
        assert!(!m.seen, "the word alone is no end");
    }
}
