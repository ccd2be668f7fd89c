//! The objects of an Ollama chat or generate answer (each NDJSON line of a stream, or the
//! one whole answer), as typed structs written straight to bytes: no JSON tree between.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// One answer object: a piece of the answer, or the last one with the statistics.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub model: &'a str,
    pub created_at: Now,
    /// Chat's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message<'a>>,
    /// Generate's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    /// Generate's thinking (chat's is in the message).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub thinking: &'a str,
    pub done: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    pub content: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub thinking: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
}

/// The last object's figures; durations in nanoseconds.
#[derive(Debug, Serialize)]
pub struct Stats<'a> {
    pub done_reason: &'static str,
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u64,
    pub prompt_eval_duration: u64,
    pub eval_count: u64,
    pub eval_duration: u64,
    /// Generate's `context`: the prompt's token ids, then the answer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Context<'a>>,
}

/// Token ids from two lists, written as one.
#[derive(Debug)]
pub struct Context<'a>(pub &'a [u64], pub &'a [u64]);

impl Serialize for Context<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().chain(self.1))
    }
}

/// The time it is written, as Ollama writes it (RFC 3339 with nanoseconds).
#[derive(Debug, Clone, Copy)]
pub struct Now;

impl Serialize for Now {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(SystemTime::now()))
    }
}

/// An error after the stream began: Ollama's last line.
#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    pub error: &'a str,
}

/// An object as one NDJSON line.
pub fn ndjson<T: Serialize>(o: &T) -> Bytes {
    let mut v = Vec::with_capacity(256);
    // Writing these types into a Vec cannot fail: no maps with non-string keys, no I/O.
    let _ = serde_json::to_writer(&mut v, o);
    v.push(b'\n');
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(line: &Bytes) -> Value {
        assert_eq!(line.last(), Some(&b'\n'));
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn a_chat_piece_has_the_message_and_no_statistics() {
        let line = ndjson(&Line {
            model: "m",
            created_at: Now,
            message: Some(Message {
                role: "assistant",
                content: "hi \"you\"",
                thinking: "",
                tool_calls: Vec::new(),
            }),
            response: None,
            thinking: "",
            done: false,
            stats: None,
            logprobs: Vec::new(),
        });
        let mut v = parsed(&line);
        let at = v.as_object_mut().unwrap().remove("created_at").unwrap();
        assert!(
            humantime::parse_rfc3339(at.as_str().unwrap()).is_ok(),
            "{at}"
        );
        assert_eq!(
            v,
            json!({"model": "m", "message": {"role": "assistant", "content": "hi \"you\""}, "done": false})
        );
    }

    #[test]
    fn the_last_generate_object_has_its_figures_and_context() {
        let line = ndjson(&Line {
            model: "m",
            created_at: Now,
            message: None,
            response: Some(""),
            thinking: "hmm",
            done: true,
            stats: Some(Stats {
                done_reason: "length",
                total_duration: 5,
                load_duration: 1,
                prompt_eval_count: 2,
                prompt_eval_duration: 3,
                eval_count: 4,
                eval_duration: 2,
                context: Some(Context(&[1, 2], &[3])),
            }),
            logprobs: vec![json!({"token": "x", "logprob": -0.5})],
        });
        let v = parsed(&line);
        assert_eq!(v["response"], "");
        assert_eq!(v["thinking"], "hmm");
        assert_eq!(v["done_reason"], "length");
        assert_eq!(v["eval_count"], 4);
        assert_eq!(v["context"], json!([1, 2, 3]));
        assert_eq!(v["logprobs"][0]["token"], "x");
        assert!(v.get("message").is_none());
    }
}
