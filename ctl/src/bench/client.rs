//! One benchmark request, in either API's dialect: the request body, then the answer read as
//! it arrives (SSE or NDJSON when streamed) for the time to first token and the token count.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{json, Value};

use super::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// POST /api/chat (NDJSON when streamed)
    Ollama,
    /// POST /v1/chat/completions (SSE when streamed)
    Openai,
    /// POST /v1/messages, Anthropic's Messages API (SSE events when streamed)
    Anthropic,
    /// POST /v1/responses, OpenAI's Responses API (SSE events when streamed)
    Responses,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Ollama => "Ollama API",
            Api::Openai => "OpenAI API",
            Api::Anthropic => "Anthropic Messages API",
            Api::Responses => "OpenAI Responses API",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Api::Ollama => "/api/chat",
            Api::Openai => "/v1/chat/completions",
            Api::Anthropic => "/v1/messages",
            Api::Responses => "/v1/responses",
        }
    }
}

/// How one request went.
#[derive(Debug)]
pub struct Outcome {
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub tokens: u64,
    /// The kind of failure, e.g. `HTTP 503`, `connect`, `timeout`, `stream cut`.
    pub error: Option<String>,
}

/// The endpoint under load, with a pool of keep-alive connections.
pub struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    host: String,
    api: Api,
    model: String,
    max_tokens: u32,
    stream: bool,
    timeout: Duration,
    /// `Authorization`'s value, when a key is given.
    authorization: Option<hyper::header::HeaderValue>,
}

impl Target {
    pub fn new(plan: &Plan) -> Result<Target, String> {
        let base = plan.url.trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(format!("--url {base}: only http:// URLs are supported"));
        }
        let uri: Uri = format!("{base}{}", plan.api.path())
            .parse()
            .map_err(|e| format!("--url {base}: {e}"))?;
        let host = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| format!("--url {base}: no host"))?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Ok(Target {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(4096)
                .build(http),
            uri,
            host,
            api: plan.api,
            model: plan.model.clone(),
            max_tokens: plan.max_tokens,
            stream: plan.stream,
            timeout: plan.timeout,
            authorization: plan
                .api_key
                .as_deref()
                .map(|k| {
                    hyper::header::HeaderValue::from_str(&format!("Bearer {k}"))
                        .map_err(|_| "--api-key: not a header value".to_string())
                })
                .transpose()?,
        })
    }

    fn body(&self, prompt: &str) -> Value {
        let messages = json!([{"role": "user", "content": prompt}]);
        match self.api {
            Api::Ollama => json!({"model": self.model, "messages": messages, "stream": self.stream,
                "options": {"num_predict": self.max_tokens}}),
            Api::Openai => {
                let mut b = json!({"model": self.model, "messages": messages, "stream": self.stream,
                    "max_tokens": self.max_tokens});
                if let (true, Some(o)) = (self.stream, b.as_object_mut()) {
                    o.insert("stream_options".into(), json!({"include_usage": true}));
                }
                b
            }
            Api::Anthropic => {
                json!({"model": self.model, "messages": messages, "stream": self.stream,
                "max_tokens": self.max_tokens})
            }
            Api::Responses => json!({"model": self.model, "input": prompt, "stream": self.stream,
                "max_output_tokens": self.max_tokens}),
        }
    }

    pub async fn send(&self, prompt: &str) -> Outcome {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(prompt, started)).await;
        let (ttft, tokens, error) = match result {
            Ok(Ok((ttft, tokens))) => (ttft, tokens, None),
            Ok(Err(kind)) => (None, 0, Some(kind)),
            Err(_) => (None, 0, Some("timeout".to_string())),
        };
        Outcome {
            latency: started.elapsed(),
            ttft,
            tokens,
            error,
        }
    }

    async fn exchange(
        &self,
        prompt: &str,
        started: Instant,
    ) -> Result<(Option<Duration>, u64), String> {
        let body = serde_json::to_vec(&self.body(prompt)).map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        if let Some(v) = &self.authorization {
            req.headers_mut()
                .insert(hyper::header::AUTHORIZATION, v.clone());
        }
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connect".to_string()
            } else {
                "request failed".to_string()
            }
        })?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let mut body = resp.into_body();
        if !self.stream {
            let bytes = body
                .collect()
                .await
                .map_err(|_| "body cut".to_string())?
                .to_bytes();
            let v: Value =
                serde_json::from_slice(&bytes).map_err(|_| "bad response".to_string())?;
            return Ok((None, whole_tokens(self.api, &v)?));
        }
        let mut reader = Lines::default();
        let mut ttft = None;
        let mut tokens = 0;
        let mut pieces = 0;
        let mut done = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| "stream cut".to_string())?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for line in reader.push(data) {
                match parse(self.api, &line)? {
                    Event::Piece => {
                        pieces += 1;
                        ttft.get_or_insert_with(|| started.elapsed());
                    }
                    Event::Tokens(n) => tokens = n,
                    Event::Done(n) => {
                        done = true;
                        if let Some(n) = n {
                            tokens = n;
                        }
                    }
                    Event::Other => {}
                }
            }
        }
        if !done {
            return Err("stream cut".into());
        }
        // Without usage figures, each content piece counts as a token.
        Ok((ttft, if tokens == 0 { pieces } else { tokens }))
    }
}

fn whole_tokens(api: Api, v: &Value) -> Result<u64, String> {
    if v.get("error").is_some() {
        return Err("error in answer".into());
    }
    Ok(match api {
        Api::Ollama => v.get("eval_count").and_then(Value::as_u64).unwrap_or(0),
        Api::Openai => v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        Api::Anthropic | Api::Responses => v
            .pointer("/usage/output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

enum Event {
    /// A piece of generated text.
    Piece,
    /// The token count so far (OpenAI's usage chunk).
    Tokens(u64),
    /// The end, with the token count if it says.
    Done(Option<u64>),
    Other,
}

fn parse(api: Api, line: &str) -> Result<Event, String> {
    match api {
        Api::Anthropic | Api::Responses => {
            // Named events: the `event:` line is redundant with the data's `type`.
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                return Ok(Event::Other);
            };
            let v: Value = serde_json::from_str(data).map_err(|_| "bad event".to_string())?;
            Ok(match v.get("type").and_then(Value::as_str).unwrap_or("") {
                "error" => return Err("error in stream".into()),
                "content_block_delta"
                | "response.output_text.delta"
                | "response.reasoning_text.delta" => Event::Piece,
                "message_delta" => {
                    match v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                        Some(n) => Event::Tokens(n),
                        None => Event::Other,
                    }
                }
                "message_stop" => Event::Done(None),
                "response.completed" | "response.incomplete" => Event::Done(
                    v.pointer("/response/usage/output_tokens")
                        .and_then(Value::as_u64),
                ),
                "response.failed" => return Err("error in stream".into()),
                _ => Event::Other,
            })
        }
        Api::Openai => {
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                return Ok(Event::Other);
            };
            if data == "[DONE]" {
                return Ok(Event::Done(None));
            }
            let v: Value = serde_json::from_str(data).map_err(|_| "bad event".to_string())?;
            if v.get("error").is_some() {
                return Err("error in stream".into());
            }
            if let Some(n) = v
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64)
            {
                return Ok(Event::Tokens(n));
            }
            let delta = v.pointer("/choices/0/delta");
            let field = |k: &str| {
                delta
                    .and_then(|d| d.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            };
            let (text, reasoning) = (field("content"), field("reasoning_content"));
            Ok(if text.is_empty() && reasoning.is_empty() {
                Event::Other
            } else {
                Event::Piece
            })
        }
        Api::Ollama => {
            let v: Value = serde_json::from_str(line).map_err(|_| "bad line".to_string())?;
            if v.get("error").is_some() {
                return Err("error in stream".into());
            }
            if v.get("done").and_then(Value::as_bool) == Some(true) {
                return Ok(Event::Done(v.get("eval_count").and_then(Value::as_u64)));
            }
            let text = v
                .pointer("/message/content")
                .and_then(Value::as_str)
                .unwrap_or("");
            let thinking = v
                .pointer("/message/thinking")
                .and_then(Value::as_str)
                .unwrap_or("");
            Ok(if text.is_empty() && thinking.is_empty() {
                Event::Other
            } else {
                Event::Piece
            })
        }
    }
}

/// Splits a byte stream into lines, whatever the chunking.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn push(&mut self, data: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=at).collect();
            let text = String::from_utf8_lossy(&line).trim().to_string();
            if !text.is_empty() {
                out.push(text);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_any_chunking() {
        let mut l = Lines::default();
        assert!(l.push(b"data: {\"a\"").is_empty());
        assert_eq!(l.push(b":1}\n\ndata: [DO"), ["data: {\"a\":1}"]);
        assert_eq!(l.push(b"NE]\n\n"), ["data: [DONE]"]);
    }

    #[test]
    fn events_of_both_dialects() {
        let piece = r#"data: {"choices":[{"delta":{"content":" the"}}]}"#;
        assert!(matches!(parse(Api::Openai, piece), Ok(Event::Piece)));
        let role = r#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#;
        assert!(matches!(parse(Api::Openai, role), Ok(Event::Other)));
        let usage = r#"data: {"choices":[],"usage":{"completion_tokens":7}}"#;
        assert!(matches!(parse(Api::Openai, usage), Ok(Event::Tokens(7))));
        assert!(parse(Api::Openai, r#"data: {"error":{"message":"x"}}"#).is_err());
        let done = r#"{"done":true,"eval_count":9}"#;
        assert!(matches!(parse(Api::Ollama, done), Ok(Event::Done(Some(9)))));
        let token = r#"{"message":{"role":"assistant","content":"hi"},"done":false}"#;
        assert!(matches!(parse(Api::Ollama, token), Ok(Event::Piece)));
    }

    #[test]
    fn events_of_the_newer_apis() {
        let delta = r#"data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"t"},"index":0}"#;
        assert!(matches!(parse(Api::Anthropic, delta), Ok(Event::Piece)));
        assert!(matches!(
            parse(Api::Anthropic, "event: content_block_delta"),
            Ok(Event::Other)
        ));
        let usage = r#"data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":15,"output_tokens":3}}"#;
        assert!(matches!(parse(Api::Anthropic, usage), Ok(Event::Tokens(3))));
        let stop = r#"data: {"type":"message_stop"}"#;
        assert!(matches!(parse(Api::Anthropic, stop), Ok(Event::Done(None))));
        let broken = r#"data: {"type":"error","error":{"type":"api_error","message":"x"}}"#;
        assert!(parse(Api::Anthropic, broken).is_err());
        let delta = r#"data: {"content_index":0,"delta":"t","type":"response.output_text.delta"}"#;
        assert!(matches!(parse(Api::Responses, delta), Ok(Event::Piece)));
        let done =
            r#"data: {"response":{"usage":{"output_tokens":4}},"type":"response.completed"}"#;
        assert!(matches!(
            parse(Api::Responses, done),
            Ok(Event::Done(Some(4)))
        ));
    }
}
