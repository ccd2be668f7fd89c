//! Stored Responses: `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`.
//!
//! vLLM keeps responses in its API server's memory, and only when it was started with
//! `VLLM_ENABLE_RESPONSES_API_STORE=1` (vllama's `engine.responses_store`). The id says
//! nothing of the model, so the relay notes which model made each response; a lookup goes
//! to that model's engine if it is still running (a stopped engine took its responses with
//! it), and never starts one.

use bytes::Bytes;
use hyper::{Response, StatusCode};

use super::dialect::Dialect;
use crate::http::{self, Body};
use crate::state::Daemon;

pub use crate::response_ids::ResponseIds;

/// Finds the response id in the first bytes of a Responses answer: `{"id":"resp_…"` whole,
/// or `"response":{"id":"resp_…"` in the stream's first event.
#[derive(Debug, Default)]
pub struct IdScan {
    buf: Vec<u8>,
    done: bool,
}

/// The id is in the first event; a body that has not shown it by then has none.
const SCAN_LIMIT: usize = 64 * 1024;
const NEEDLE: &[u8] = b"\"id\":\"resp_";

impl IdScan {
    pub fn feed(&mut self, data: &[u8]) -> Option<String> {
        if self.done {
            return None;
        }
        self.buf.extend_from_slice(data);
        let found = memchr::memmem::find(&self.buf, NEEDLE).and_then(|at| {
            let start = at + NEEDLE.len() - "resp_".len();
            let rest = self.buf.get(start..)?;
            let len = memchr::memchr(b'"', rest)?;
            std::str::from_utf8(rest.get(..len)?)
                .ok()
                .map(str::to_string)
        });
        if found.is_some() || self.buf.len() > SCAN_LIMIT {
            self.done = true;
            self.buf = Vec::new();
        }
        found
    }
}

/// `GET /v1/responses/{id}` (with its query: `stream`, `starting_after`) and
/// `POST /v1/responses/{id}/cancel`.
pub async fn stored(daemon: &Daemon, parts: http::Parts, id: &str) -> Response<Body> {
    let oai = Dialect::OpenAi;
    if !daemon.config().config.engine.responses_store {
        return oai.error(
            StatusCode::NOT_FOUND,
            format!(
                "response {id} was not kept: engines keep responses only with \
                 engine.responses_store = true in /etc/vllama/vllama.toml"
            ),
            "invalid_request_error",
        );
    }
    let Some(model) = daemon.responses.get(id) else {
        return oai.error(
            StatusCode::NOT_FOUND,
            format!("no response {id} was made by this server since it started"),
            "invalid_request_error",
        );
    };
    crate::observe::requested(&model);
    let Some(lease) = daemon.scheduler.lease_running(&model) else {
        return oai.error(
            StatusCode::NOT_FOUND,
            format!(
                "response {id} was kept by the engine of {model}, which has stopped since \
                 (responses live in the engine's memory)"
            ),
            "invalid_request_error",
        );
    };
    super::send(lease, parts, Bytes::new(), oai).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_whole_or_streamed_in_any_framing() {
        let whole = br#"{"id":"resp_b929178e7500b4e1","created_at":1,"output":[{"id":"msg_1"}]}"#;
        let stream = b"event: response.created\ndata: {\"response\":{\"id\":\"resp_94e6\",\"created_at\":1}}\n\n";
        for (body, want) in [
            (&whole[..], "resp_b929178e7500b4e1"),
            (&stream[..], "resp_94e6"),
        ] {
            for size in 1..body.len() {
                let mut scan = IdScan::default();
                let found: Vec<String> = body.chunks(size).filter_map(|c| scan.feed(c)).collect();
                assert_eq!(found, [want], "frames of {size}");
            }
        }
        let mut scan = IdScan::default();
        assert_eq!(scan.feed(br#"{"id":"chatcmpl-1"}"#), None);
    }
}
