//! Running an Ollama chat or generate request on an engine. The engine is always asked for
//! an SSE stream with usage, so time to first token and eval time are measured even when
//! the client wants one JSON object; chunks become Ollama NDJSON lines as they arrive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use tokio_util::task::TaskTracker;

use super::chunk::{self, Chunk, Text};
use super::outbound::EngineRequest;
use super::reply::{self, Context, Failure, Line, Message, Now, Stats};
use crate::http::{self, Body};
use crate::scheduler::Lease;
use crate::sse::{Event, SseReader};

/// Which Ollama route, and so which response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    /// `/api/generate`; `raw` uses the engine's completions API with the prompt as is.
    Generate {
        raw: bool,
    },
}

/// A translated request, ready for the engine.
#[derive(Debug)]
pub struct Job {
    pub kind: Kind,
    /// The name the client used: responses carry it back.
    pub model: String,
    pub stream: bool,
    /// Ask for token ids (generate's `context`).
    pub want_context: bool,
    /// A prompt longer than the context is cut from the front (Ollama's `truncate`, on by
    /// default); off, it is refused with how much it is over.
    pub truncate: bool,
    /// `engine.stall_timeout`.
    pub stall_timeout: Duration,
    pub started: Instant,
}

/// The engine's events, failing with the stall error when one does not come in time.
struct Events {
    reader: SseReader,
    stall: crate::stall::Stall,
    done: bool,
}

/// Why the engine's events stopped: what the client is told, whole.
struct Broken(String);

impl Events {
    /// After `[DONE]`: the engine's connection kept for the next request.
    async fn finish(self) {
        self.reader.finish().await;
    }

    /// The next event; `None` only after `[DONE]`. A body that ends before it is broken.
    async fn next(&mut self, model: &str) -> Option<Result<Event, Broken>> {
        if self.done {
            return None;
        }
        match tokio::time::timeout(self.stall.after, self.reader.next()).await {
            Ok(None) => {
                self.done = true;
                Some(Err(Broken(format!(
                    "the engine for {model} stopped in the middle of the response: its stream ended without [DONE]"
                ))))
            }
            Ok(Some(Ok(Event::Done))) => {
                self.done = true;
                Some(Ok(Event::Done))
            }
            Ok(event) => event.map(|e| {
                e.map_err(|e| {
                    Broken(format!(
                        "the engine for {model} stopped in the middle of the response: {e}"
                    ))
                })
            }),
            Err(_) => Some(Err(Broken(self.stall.fired()))),
        }
    }
}

/// What the engine has sent so far.
#[derive(Debug, Default)]
struct Progress {
    text: String,
    thinking: String,
    tool_calls: BTreeMap<u64, (String, String)>,
    /// Tool calls already streamed to the client (by index).
    sent_calls: std::collections::BTreeSet<u64>,
    finish: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    first_token_at: Option<Instant>,
    prompt_ids: Vec<u64>,
    token_ids: Vec<u64>,
    /// Log probabilities in Ollama's shape, not yet sent (streaming) or all (whole).
    logprobs: Vec<Value>,
    /// Streaming: each piece goes out as it comes, so the whole text is not kept.
    streaming: bool,
}

/// What one chunk adds to the answer's text.
#[derive(Debug, Default, PartialEq)]
struct Piece<'c> {
    content: &'c str,
    thought: &'c str,
}

impl Progress {
    fn streaming() -> Progress {
        Progress {
            streaming: true,
            ..Progress::default()
        }
    }

    /// Takes one chunk; returns the new content and thinking text in it.
    fn feed<'c>(&mut self, chunk: &'c Chunk<'_>) -> Piece<'c> {
        if let Some(usage) = &chunk.usage {
            self.prompt_tokens = usage.prompt_tokens.unwrap_or(self.prompt_tokens);
            self.completion_tokens = usage.completion_tokens.unwrap_or(self.completion_tokens);
        }
        if let Some(ids) = &chunk.prompt_token_ids {
            self.prompt_ids.clone_from(ids);
        }
        let Some(choice) = chunk.choice() else {
            return Piece::default();
        };
        if let Some(ids) = &choice.token_ids {
            self.token_ids.extend_from_slice(ids);
        }
        if let Some(lp) = &choice.logprobs {
            self.logprobs.extend(super::translate::ollama_logprobs(lp));
        }
        if let Some(ids) = &choice.prompt_token_ids {
            self.prompt_ids.clone_from(ids);
        }
        if let Some(reason) = &choice.finish_reason {
            self.finish = Some(reason.as_str().to_string());
        }
        let delta = choice.delta.as_ref();
        let content = delta
            .and_then(|d| d.content.value())
            .or(choice.text.value())
            .map_or("", Text::as_str);
        let thought = delta
            .and_then(|d| d.reasoning.as_ref().or(d.reasoning_content.as_ref()))
            .map_or("", Text::as_str);
        for call in delta
            .and_then(|d| d.tool_calls.value())
            .into_iter()
            .flatten()
        {
            let index = call.index.unwrap_or(self.tool_calls.len() as u64);
            let entry = self.tool_calls.entry(index).or_default();
            if let Some(function) = &call.function {
                if let Some(name) = &function.name {
                    entry.0.push_str(name.as_str());
                }
                if let Some(args) = &function.arguments {
                    entry.1.push_str(args.as_str());
                }
            }
        }
        // A chunk carries a token even when it decodes to nothing (special tokens are
        // stripped); only the opening chunk that announces the role carries none.
        let is_token = !delta.is_some_and(|d| d.role.is_present())
            && (delta.is_some_and(|d| d.content.is_present() || d.tool_calls.is_present())
                || choice.text.is_present()
                || !thought.is_empty());
        if is_token && self.first_token_at.is_none() {
            self.first_token_at = Some(Instant::now());
        }
        if !self.streaming {
            self.text.push_str(content);
            self.thinking.push_str(thought);
        }
        Piece { content, thought }
    }

    /// Ollama's tool calls: arguments as a JSON object (OpenAI sends a string).
    fn ollama_tool_calls(&self) -> Vec<Value> {
        self.tool_calls
            .values()
            .map(|(name, args)| ollama_call(name, args))
            .collect()
    }

    /// Streaming: the calls not sent yet whose arguments are complete (they parse as a JSON
    /// object: no prefix of an object does), or every one left when `all`.
    fn take_calls(&mut self, all: bool) -> Vec<Value> {
        let mut out = Vec::new();
        for (index, (name, args)) in &self.tool_calls {
            if self.sent_calls.contains(index) || name.is_empty() {
                continue;
            }
            // Arguments come a few characters a token: parse only once they could be whole.
            let complete = args.trim_end().ends_with('}')
                && serde_json::from_str::<Value>(args).is_ok_and(|v| v.is_object());
            if complete || all {
                out.push(ollama_call(name, args));
                self.sent_calls.insert(*index);
            }
        }
        out
    }

    /// The last object's figures.
    fn stats(&self, job: &Job, load: Duration, sent: Instant) -> Stats<'_> {
        let end = Instant::now();
        let first = self.first_token_at.unwrap_or(end);
        let context = (job.want_context
            && !(self.prompt_ids.is_empty() && self.token_ids.is_empty()))
        .then(|| Context(&self.prompt_ids, &self.token_ids));
        Stats {
            done_reason: match self.finish.as_deref() {
                Some("length") => "length",
                _ => "stop",
            },
            total_duration: nanos(end - job.started),
            load_duration: nanos(load),
            prompt_eval_count: self.prompt_tokens,
            prompt_eval_duration: nanos(first.saturating_duration_since(sent)),
            eval_count: self.completion_tokens,
            eval_duration: nanos(end.saturating_duration_since(first)),
            context,
        }
    }
}

fn ollama_call(name: &str, args: &str) -> Value {
    let arguments: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
    json!({"function": {"name": name, "arguments": arguments}})
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One answer object: a piece of text (with the log probabilities gathered so far), or the
/// last one when `stats` are given.
fn object<'a>(
    job: &'a Job,
    piece: Piece<'a>,
    tool_calls: Vec<Value>,
    logprobs: Vec<Value>,
    stats: Option<Stats<'a>>,
) -> Line<'a> {
    let chat = job.kind == Kind::Chat;
    Line {
        model: &job.model,
        created_at: Now,
        message: chat.then_some(Message {
            role: "assistant",
            content: piece.content,
            thinking: piece.thought,
            tool_calls,
        }),
        response: (!chat).then_some(piece.content),
        thinking: if chat { "" } else { piece.thought },
        done: stats.is_some(),
        stats,
        logprobs,
    }
}

/// The request's first token and token counts, for its metrics and access-log line.
fn observed(request: Option<&crate::observe::Request>, p: &Progress) {
    if let Some(r) = request {
        if let Some(at) = p.first_token_at {
            r.first_token_at(at);
        }
        r.tokens(p.prompt_tokens, p.completion_tokens);
    }
}

/// An engine's error answer: its status and its message.
async fn error_of(resp: Response<crate::engine::EngineBody>) -> (StatusCode, String) {
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .or(v.get("detail").and_then(Value::as_str))
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    (status, message)
}

/// An engine error as Ollama reports it, with the engine's own message.
fn refuse(status: StatusCode, model: &str, message: &str) -> Response<Body> {
    let status = match status.as_u16() {
        400 | 422 => StatusCode::BAD_REQUEST,
        404 => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    http::error(status, format!("{model}: {message}"))
}

/// POSTs a JSON body to the lease's engine.
async fn post(
    lease: &Lease,
    path: &'static str,
    payload: serde_json::Result<Vec<u8>>,
) -> Result<Response<crate::engine::EngineBody>, Response<Body>> {
    let payload =
        payload.map_err(|e| http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut req = Request::new(Bytes::from(payload));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = hyper::Uri::from_static(path);
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = crate::observe::request_id() {
        req.headers_mut()
            .insert(crate::request_id::HEADER, crate::request_id::value(&id));
    }
    lease.engine().client().send(req).await.map_err(|e| {
        let engine = lease.engine();
        // Ollama answers 500 whatever failed; a remote that is down is a 503 to retry.
        let status = match engine.spec.kind.local() {
            true => StatusCode::INTERNAL_SERVER_ERROR,
            false => engine.lost(&e),
        };
        http::error(
            status,
            format!("the engine for {} failed: {e}", lease.model()),
        )
    })
}

/// How many prompt tokens a truncated prompt keeps: the context less room for the answer
/// (`num_predict`, else a quarter of the context up to 1,024 tokens: vLLM cannot shift the
/// context while it generates, as llama.cpp does).
fn kept_tokens(context: u64, params: &Map<String, Value>) -> u64 {
    let room = params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or((context / 4).min(1024));
    context.saturating_sub(room).max(1)
}

/// `truncate: false` and a prompt over the context: a 400 that says by how much (the
/// engine's tokenizer counts the prompt; vLLM's own message only says "at least").
async fn over_context(
    lease: &Lease,
    job: &Job,
    request: &EngineRequest<'_>,
    context: u64,
    message: &str,
) -> Response<Body> {
    let count = request.tokenize_body(lease.served_name());
    let counted = match post(lease, "/tokenize", count).await {
        Ok(resp) if resp.status().is_success() => resp
            .into_body()
            .collect()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b.to_bytes()).ok())
            .and_then(|v| v.get("count").and_then(Value::as_u64)),
        _ => None,
    };
    let text = match counted {
        Some(n) => format!(
            "the prompt is {n} tokens, {} over the context length of {context} (truncate is false, so it is not cut: shorten it, or raise options.num_ctx or the model's max_model_len)",
            n.saturating_sub(context)
        ),
        None => message.to_string(),
    };
    http::error(StatusCode::BAD_REQUEST, format!("{}: {text}", job.model))
}

/// Sends the job to the lease's engine and answers in Ollama's shape.
pub async fn run(
    job: Job,
    mut request: EngineRequest<'_>,
    lease: Lease,
    tasks: &TaskTracker,
) -> Response<Body> {
    let path = match job.kind {
        Kind::Generate { raw: true } => "/v1/completions",
        _ => "/v1/chat/completions",
    };
    let body = |request: &EngineRequest<'_>| request.body(lease.served_name(), job.want_context);
    let sent = Instant::now();
    let mut resp = match post(&lease, path, body(&request)).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    if !resp.status().is_success() {
        let (status, message) = error_of(resp).await;
        let over = (status == StatusCode::BAD_REQUEST)
            .then(|| crate::engine::limits::context_overflow(&message))
            .flatten();
        let Some(context) = over else {
            return refuse(status, &job.model, &message);
        };
        if !job.truncate {
            return over_context(&lease, &job, &request, context, &message).await;
        }
        let keep = kept_tokens(context, &request.params);
        tracing::info!(model = %lease.model(), context, keep, "the prompt is longer than the context: cutting it from the front");
        request
            .params
            .insert("truncate_prompt_tokens".into(), json!(keep));
        resp = match post(&lease, path, body(&request)).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        if !resp.status().is_success() {
            let (status, message) = error_of(resp).await;
            return refuse(status, &job.model, &message);
        }
    }
    let mut reader = Events {
        reader: SseReader::new(resp.into_body()),
        stall: crate::stall::Stall::new(job.stall_timeout, lease.engine().clone(), tasks.clone()),
        done: false,
    };
    let load = lease.load_duration;

    if !job.stream {
        let mut p = Progress::default();
        while let Some(event) = reader.next(&job.model).await {
            let data = match event {
                Ok(Event::Done) => break,
                Ok(Event::Data(data)) => data,
                Err(Broken(why)) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, why),
            };
            let chunk = match parse(&job.model, &data) {
                Ok(chunk) => chunk,
                Err(Broken(why)) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, why),
            };
            if let Some(message) = chunk.error_message() {
                return http::error(StatusCode::INTERNAL_SERVER_ERROR, message);
            }
            p.feed(&chunk);
        }
        reader.finish().await;
        let calls = p.ollama_tool_calls();
        let logprobs = std::mem::take(&mut p.logprobs);
        let whole = Piece {
            content: &p.text,
            thought: &p.thinking,
        };
        let stats = p.stats(&job, load, sent);
        let mut answer = Vec::with_capacity(512);
        object(&job, whole, calls, logprobs, Some(stats)).write(&mut answer);
        let resp = http::json_bytes(StatusCode::OK, answer);
        observed(crate::observe::current().as_deref(), &p);
        drop(lease);
        return resp;
    }

    let (tx, resp) = http::channel(StatusCode::OK, "application/x-ndjson");
    let observe = crate::observe::current();
    crate::tasks::spawn(tasks, "ollama stream", async move {
        stream(&job, reader, &tx, observe.as_deref(), load, sent).await;
        // The lease is held until the last line is sent. The record goes before the
        // channel closes: the access line and the metrics are written by the time the
        // client sees the end of the stream.
        drop(lease);
        drop(observe);
        drop(tx);
    });
    resp
}

/// One event's chunk; one that cannot be read breaks the stream.
fn parse<'d>(model: &str, data: &'d [u8]) -> Result<Chunk<'d>, Broken> {
    chunk::parse(data).map_err(|e| {
        Broken(format!(
            "the engine for {model} stopped in the middle of the response: it sent an event that is not an OpenAI chunk: {e}"
        ))
    })
}

/// Sends the engine's stream to the client as NDJSON lines, ending with the `done` line or
/// an error line.
async fn stream(
    job: &Job,
    mut reader: Events,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    observe: Option<&crate::observe::Request>,
    load: Duration,
    sent: Instant,
) {
    let mut p = Progress::streaming();
    let failure = loop {
        let data = match reader.next(&job.model).await {
            None | Some(Ok(Event::Done)) => break None,
            Some(Ok(Event::Data(data))) => data,
            Some(Err(Broken(why))) => break Some(why),
        };
        let chunk = match parse(&job.model, &data) {
            Ok(chunk) => chunk,
            Err(Broken(why)) => break Some(why),
        };
        if let Some(message) = chunk.error_message() {
            break Some(message);
        }
        let piece = p.feed(&chunk);
        // Each tool call goes out as soon as it is complete, not at the end.
        let calls = match job.kind {
            Kind::Chat => p.take_calls(false),
            Kind::Generate { .. } => Vec::new(),
        };
        if piece == Piece::default() && calls.is_empty() && p.logprobs.is_empty() {
            continue;
        }
        let logprobs = std::mem::take(&mut p.logprobs);
        let line = object(job, piece, calls, logprobs, None).ndjson();
        if tx.send(line).await.is_err() {
            tracing::debug!(model = %job.model, "client left: aborting the engine request");
            return; // dropping the reader closes the engine connection: vLLM aborts
        }
    };
    if let Some(why) = failure {
        // After streaming began, an error is one last NDJSON line, as Ollama does.
        tracing::error!(model = %job.model, error = %why, "engine stream broke off");
        let _ = tx.send(reply::ndjson(&Failure { error: &why })).await;
        return;
    }
    reader.finish().await;
    let calls = p.take_calls(true);
    if !calls.is_empty() && job.kind == Kind::Chat {
        let line = object(job, Piece::default(), calls, Vec::new(), None).ndjson();
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let stats = p.stats(job, load, sent);
    let last = object(job, Piece::default(), Vec::new(), Vec::new(), Some(stats)).ndjson();
    observed(observe, &p);
    let _ = tx.send(last).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(path: &str) -> Vec<String> {
        let text = std::fs::read_to_string(format!(
            "{}/../tests/fixtures/real-vllm/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(str::to_string)
            .collect()
    }

    /// Feeds one event's JSON; the content and thought it added.
    fn feed(p: &mut Progress, event: impl ToString) -> (String, String) {
        let event = event.to_string();
        let chunk = chunk::parse(event.as_bytes()).unwrap();
        let piece = p.feed(&chunk);
        (piece.content.to_string(), piece.thought.to_string())
    }

    #[test]
    fn real_chat_stream_accumulates() {
        let mut p = Progress::default();
        let mut pieces = Vec::new();
        for e in events("chat-stream.sse") {
            let (piece, _) = feed(&mut p, &e);
            if !piece.is_empty() {
                pieces.push(piece);
            }
        }
        assert_eq!(pieces.len(), 3);
        assert_eq!(p.text, pieces.concat());
        assert_eq!(p.finish.as_deref(), Some("length"));
        assert_eq!((p.prompt_tokens, p.completion_tokens), (9, 3));
        assert!(p.first_token_at.is_some());
    }

    #[test]
    fn a_streamed_answer_is_not_kept_but_still_counted() {
        let mut p = Progress::streaming();
        let mut pieces = 0;
        for e in events("chat-stream.sse") {
            if !feed(&mut p, &e).0.is_empty() {
                pieces += 1;
            }
        }
        assert_eq!(pieces, 3, "the pieces still come out");
        assert!(p.text.is_empty() && p.thinking.is_empty());
        assert_eq!((p.prompt_tokens, p.completion_tokens), (9, 3));
        assert!(p.first_token_at.is_some());
    }

    #[test]
    fn real_completion_stream_accumulates() {
        let mut p = Progress::default();
        for e in events("completion-stream.sse") {
            feed(&mut p, &e);
        }
        assert!(!p.text.is_empty());
        assert_eq!(p.finish.as_deref(), Some("length"));
    }

    #[test]
    fn tool_call_deltas_become_ollama_objects() {
        let mut p = Progress::default();
        for chunk in [
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}, "finish_reason": "tool_calls"}]}),
        ] {
            feed(&mut p, &chunk);
        }
        let calls = p.ollama_tool_calls();
        assert_eq!(
            calls,
            [json!({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}})]
        );
    }

    #[test]
    fn tokens_that_decode_to_nothing_still_start_the_clock() {
        let mut p = Progress::default();
        feed(
            &mut p,
            json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
        );
        assert!(p.first_token_at.is_none(), "the role chunk is no token");
        feed(
            &mut p,
            json!({"choices": [{"delta": {"content": ""}, "token_ids": null}]}),
        );
        assert!(p.first_token_at.is_some());
    }

    /// A real vLLM 0.32 stream (hermes parser, tiny model forced by structured outputs):
    /// the name first, then the arguments a character at a time. The Ollama call goes out
    /// once, as soon as its arguments parse, with the arguments as an object.
    #[test]
    fn a_real_tool_call_stream_becomes_one_ollama_call_when_complete() {
        let mut p = Progress::streaming();
        let chunks = events("chat-tool-call-stream.sse");
        let mut sent_at = None;
        let mut sent = Vec::new();
        for (i, e) in chunks.iter().enumerate() {
            feed(&mut p, e);
            let calls = p.take_calls(false);
            if !calls.is_empty() {
                sent_at.get_or_insert(i);
                sent.extend(calls);
            }
        }
        assert_eq!(
            sent,
            [json!({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}})]
        );
        let finish = chunks
            .iter()
            .position(|c| c.contains(r#""finish_reason":"tool_calls""#))
            .expect("a finish chunk");
        assert!(
            sent_at.is_some_and(|at| at <= finish),
            "sent at {sent_at:?}, finish at {finish}"
        );
        assert!(p.take_calls(true).is_empty(), "not sent twice");
        assert_eq!(p.finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn reasoning_becomes_thinking() {
        let mut p = Progress::default();
        let (_, t) = feed(
            &mut p,
            json!({"choices": [{"delta": {"reasoning": "hmm"}}]}),
        );
        assert_eq!(t, "hmm");
        let (_, t) = feed(
            &mut p,
            json!({"choices": [{"delta": {"reasoning_content": " ok"}}]}),
        );
        assert_eq!(t, " ok");
        assert_eq!(p.thinking, "hmm ok");
    }
}
