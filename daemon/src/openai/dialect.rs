//! The two API dialects the pass-through speaks: OpenAI's (chat, completions, embeddings,
//! Responses, tokenize) and Anthropic's (Messages). They differ in the shape of an error,
//! in how an event stream ends, and in the event that reports a stream broken off.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::http::{self, Body};
use crate::needle::Needle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

static MESSAGES_END: [Needle; 1] = [Needle::new(b"\"type\":\"message_stop\"")];
static RESPONSES_END: [Needle; 4] = [
    Needle::new(b"\"type\":\"response.completed\""),
    Needle::new(b"\"type\":\"response.incomplete\""),
    Needle::new(b"\"type\":\"response.failed\""),
    Needle::new(b"\"type\":\"response.cancelled\""),
];
static OPENAI_END: [Needle; 1] = [Needle::new(b"data: [DONE]")];

/// How a whole stream ends, per route: the events that end it (anything else at the end of
/// the body means the engine stopped in the middle) and the name to report them by.
pub fn stream_end(path: &str) -> (&'static [Needle], &'static str) {
    if path.starts_with("/v1/messages") {
        (&MESSAGES_END, "message_stop")
    } else if path.starts_with("/v1/responses") {
        (&RESPONSES_END, "response.completed")
    } else {
        (&OPENAI_END, "[DONE]")
    }
}

impl Dialect {
    /// An error in this dialect's shape. `kind` is OpenAI's error type (Anthropic's follows
    /// from the status).
    pub fn error(
        self,
        status: StatusCode,
        message: impl Into<String>,
        kind: &str,
    ) -> Response<Body> {
        let message = message.into();
        match self {
            Dialect::OpenAi => http::json(
                status,
                &json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}}),
            ),
            Dialect::Anthropic => http::json(
                status,
                &json!({"type": "error", "error": {"type": anthropic_type(status), "message": message}}),
            ),
        }
    }

    /// An engine's error answer, reshaped: vLLM answers validation errors in OpenAI's shape
    /// even on its Anthropic routes, and with its own type names (`NotFoundError`).
    pub fn engine_error(self, status: StatusCode, body: &[u8]) -> Response<Body> {
        let parsed = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let message = parsed
            .pointer("/error/message")
            .and_then(Value::as_str)
            .or(parsed.get("detail").and_then(Value::as_str))
            .or(parsed.get("message").and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        match self {
            // vLLM's OpenAI errors are OpenAI's shape already; only others are rewritten.
            Dialect::OpenAi
                if parsed
                    .pointer("/error/message")
                    .is_some_and(Value::is_string) =>
            {
                http::json(status, &parsed)
            }
            Dialect::OpenAi => self.error(status, message, openai_type(status)),
            Dialect::Anthropic => self.error(status, message, ""),
        }
    }

    /// The last event of a stream the engine broke off.
    pub fn break_event(self, message: &str) -> Bytes {
        let event = match self {
            Dialect::OpenAi => {
                json!({"error": {"message": message, "type": "engine_error", "param": null, "code": 502}})
            }
            Dialect::Anthropic => {
                json!({"type": "error", "error": {"type": "api_error", "message": message}})
            }
        };
        match self {
            Dialect::OpenAi => Bytes::from(format!("data: {event}\n\n")),
            Dialect::Anthropic => Bytes::from(format!("event: error\ndata: {event}\n\n")),
        }
    }
}

/// Anthropic's error type for a status (its documented pairs).
pub fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// OpenAI's error type for a status.
pub fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "engine_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: Response<Body>) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn engine_errors_take_the_dialects_shape() {
        // vLLM 0.32 on /v1/messages: OpenAI's shape for a validation error...
        let validation = br#"{"error":{"message":"1 validation error","type":"Bad Request","param":"body.messages","code":400}}"#;
        let v = body(Dialect::Anthropic.engine_error(StatusCode::BAD_REQUEST, validation)).await;
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "1 validation error"}})
        );
        // ... and its own type names in Anthropic's.
        let missing = br#"{"type":"error","error":{"type":"NotFoundError","message":"The model `x` does not exist."}}"#;
        let v = body(Dialect::Anthropic.engine_error(StatusCode::NOT_FOUND, missing)).await;
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["message"], "The model `x` does not exist.");
        // OpenAI errors pass as they are; FastAPI's bare 404 becomes one.
        let v = body(Dialect::OpenAi.engine_error(StatusCode::BAD_REQUEST, validation)).await;
        assert_eq!(v["error"]["param"], "body.messages");
        let v =
            body(Dialect::OpenAi.engine_error(StatusCode::NOT_FOUND, br#"{"detail":"Not Found"}"#))
                .await;
        assert_eq!(v["error"]["message"], "Not Found");
        assert_eq!(v["error"]["type"], "not_found_error");
    }

    #[test]
    fn break_events_parse_as_their_dialects_errors() {
        let a = Dialect::Anthropic.break_event("gone");
        let text = std::str::from_utf8(&a).unwrap();
        assert!(text.starts_with("event: error\ndata: "), "{text}");
        let v: Value =
            serde_json::from_str(text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        let o = Dialect::OpenAi.break_event("gone");
        assert!(o.starts_with(b"data: {\"error\""));
    }
}
