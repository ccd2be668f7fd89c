//! The objects of an Ollama chat or generate answer (each NDJSON line of a stream, or the
//! one whole answer), as typed structs written straight to bytes: no JSON tree between.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// One answer object: a piece of the answer, or the last one with the statistics. Written
/// straight to bytes ([`Line::write`]): the keys are fixed text, so only the values go
/// through serde_json (its escaping of strings, the log probabilities and tool calls).
#[derive(Debug)]
pub struct Line<'a> {
    pub model: &'a str,
    pub created_at: Now,
    /// Chat's answer.
    pub message: Option<Message<'a>>,
    /// Generate's answer.
    pub response: Option<&'a str>,
    /// Generate's thinking (chat's is in the message); left out when empty.
    pub thinking: &'a str,
    pub done: bool,
    /// The last object's: written among its members.
    pub stats: Option<Stats<'a>>,
    /// Left out when empty.
    pub logprobs: Vec<Value>,
}

impl Line<'_> {
    /// The object's JSON, in the order Ollama writes its members.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"model\":");
        value(out, self.model);
        out.extend_from_slice(b",\"created_at\":\"");
        self.created_at.write(out);
        out.push(b'"');
        if let Some(m) = &self.message {
            out.extend_from_slice(b",\"message\":{\"role\":");
            value(out, m.role);
            out.extend_from_slice(b",\"content\":");
            value(out, m.content);
            if !m.thinking.is_empty() {
                out.extend_from_slice(b",\"thinking\":");
                value(out, m.thinking);
            }
            if !m.tool_calls.is_empty() {
                out.extend_from_slice(b",\"tool_calls\":");
                value(out, &m.tool_calls);
            }
            out.push(b'}');
        }
        if let Some(response) = self.response {
            out.extend_from_slice(b",\"response\":");
            value(out, response);
        }
        if !self.thinking.is_empty() {
            out.extend_from_slice(b",\"thinking\":");
            value(out, self.thinking);
        }
        out.extend_from_slice(if self.done {
            b",\"done\":true"
        } else {
            b",\"done\":false"
        });
        if let Some(st) = &self.stats {
            out.extend_from_slice(b",\"done_reason\":");
            value(out, st.done_reason);
            for (key, n) in [
                (&b",\"total_duration\":"[..], st.total_duration),
                (b",\"load_duration\":", st.load_duration),
                (b",\"prompt_eval_count\":", st.prompt_eval_count),
                (b",\"prompt_eval_duration\":", st.prompt_eval_duration),
                (b",\"eval_count\":", st.eval_count),
                (b",\"eval_duration\":", st.eval_duration),
            ] {
                out.extend_from_slice(key);
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            }
            if let Some(Context(prompt, answer)) = &st.context {
                out.extend_from_slice(b",\"context\":[");
                for (i, id) in prompt.iter().chain(answer.iter()).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(itoa::Buffer::new().format(*id).as_bytes());
                }
                out.push(b']');
            }
        }
        if !self.logprobs.is_empty() {
            out.extend_from_slice(b",\"logprobs\":");
            value(out, &self.logprobs);
        }
        out.push(b'}');
    }

    /// The object as one NDJSON line.
    pub fn ndjson(&self) -> Bytes {
        let mut out = Vec::with_capacity(256);
        self.write(&mut out);
        out.push(b'\n');
        Bytes::from(out)
    }
}

/// A value as serde_json writes it, strings escaped (writing into a Vec cannot fail for
/// these: strings, JSON values).
fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let _ = serde_json::to_writer(out, v);
}

#[derive(Debug)]
pub struct Message<'a> {
    pub role: &'static str,
    pub content: &'a str,
    /// Left out when empty.
    pub thinking: &'a str,
    /// Left out when empty.
    pub tool_calls: Vec<Value>,
}

/// The last object's figures; durations in nanoseconds.
#[derive(Debug)]
pub struct Stats<'a> {
    pub done_reason: &'static str,
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u64,
    pub prompt_eval_duration: u64,
    pub eval_count: u64,
    pub eval_duration: u64,
    /// Generate's `context`: the prompt's token ids, then the answer's; left out when
    /// `None`.
    pub context: Option<Context<'a>>,
}

/// Token ids from two lists, written as one.
#[derive(Debug)]
pub struct Context<'a>(pub &'a [u64], pub &'a [u64]);

/// The time it is written, as Ollama writes it (RFC 3339 with nanoseconds).
#[derive(Debug, Clone, Copy)]
pub struct Now;

impl Now {
    /// The time, without quotes (its text needs no escapes).
    fn write(self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "{}",
            humantime::format_rfc3339_nanos(SystemTime::now())
        );
    }
}

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

    fn line(l: Line<'_>) -> Bytes {
        l.ndjson()
    }

    /// The last object's figures, as a test gives them.
    fn stats(done_reason: &'static str, context: Option<Context<'static>>) -> Stats<'static> {
        Stats {
            done_reason,
            total_duration: 5,
            load_duration: 1,
            prompt_eval_count: 2,
            prompt_eval_duration: 3,
            eval_count: 4,
            eval_duration: 2,
            context,
        }
    }

    fn parsed(line: &Bytes) -> Value {
        assert_eq!(line.last(), Some(&b'\n'));
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn a_chat_piece_has_the_message_and_no_statistics() {
        let line = line(Line {
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
        let line = line(Line {
            model: "m",
            created_at: Now,
            message: None,
            response: Some(""),
            thinking: "hmm",
            done: true,
            stats: Some(stats("length", Some(Context(&[1, 2], &[3])))),
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

    #[test]
    fn members_come_in_ollamas_order_and_empty_ones_are_left_out() {
        let first = line(Line {
            model: "m",
            created_at: Now,
            message: None,
            response: Some("r"),
            thinking: "t",
            done: true,
            stats: Some(stats("stop", Some(Context(&[1], &[])))),
            logprobs: vec![json!({"token": "x"})],
        });
        let text = std::str::from_utf8(&first).unwrap();
        let order = [
            "model",
            "created_at",
            "response",
            "thinking",
            "done",
            "done_reason",
            "total_duration",
            "load_duration",
            "prompt_eval_count",
            "prompt_eval_duration",
            "eval_count",
            "eval_duration",
            "context",
            "logprobs",
        ]
        .map(|k| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}: {text}"))
        });
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        let whole = line(Line {
            model: "m",
            created_at: Now,
            message: None,
            response: Some(""),
            thinking: "",
            done: true,
            stats: Some(stats("stop", None)),
            logprobs: Vec::new(),
        });
        let v = parsed(&whole);
        assert_eq!(v.as_object().unwrap().len(), 11, "{v}");
        for absent in ["thinking", "context", "logprobs", "message"] {
            assert!(v.get(absent).is_none(), "{absent}: {v}");
        }
    }

    #[test]
    fn a_chat_line_with_thinking_and_tool_calls_is_valid_json_with_them() {
        let text = "line\nnext \u{1} \"q\" \\ caf\u{e9}";
        let call = json!({"function": {"name": "f", "arguments": {"a": 1}}});
        let v = parsed(&line(Line {
            model: "m:latest",
            created_at: Now,
            message: Some(Message {
                role: "assistant",
                content: text,
                thinking: "why",
                tool_calls: vec![call.clone()],
            }),
            response: None,
            thinking: "",
            done: false,
            stats: None,
            logprobs: Vec::new(),
        }));
        assert_eq!(
            v["message"],
            json!({"role": "assistant", "content": text, "thinking": "why", "tool_calls": [call]})
        );
        assert_eq!(v["model"], "m:latest");
        assert_eq!(v["done"], false);
    }
}
