//! One event of an engine's OpenAI stream (`chat.completion.chunk` or `text_completion`),
//! read into typed structs that borrow the event's text: only the members the Ollama
//! answer needs are kept, the rest (`id`, `model`, `created`, …) are skipped without being
//! built. Whether a member is there at all, even as `null`, is kept where it matters (a
//! chunk is a token when it has a `content` member, whatever its value).

pub(crate) mod compact;

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;

/// A member that may be missing, `null`, or a value.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    pub fn is_present(&self) -> bool {
        !matches!(self, Field::Absent)
    }

    pub fn value(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Field::Value(v),
            None => Field::Null,
        })
    }
}

/// A JSON string, borrowed from the event unless it had escapes to undo (serde's
/// `borrow` on a `Cow<str>`, as `openai::body`'s keys are read).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The members of a chunk that the Ollama answer is made of.
#[derive(Debug, Default, Deserialize)]
pub struct Chunk<'a> {
    #[serde(borrow, default)]
    pub choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub prompt_token_ids: Option<Vec<u64>>,
    /// An error reported in the stream: `{"error": {"message": …}}`, or any other shape.
    #[serde(default)]
    pub error: Field<Value>,
}

impl Chunk<'_> {
    pub fn choice(&self) -> Option<&Choice<'_>> {
        self.choices.as_deref().and_then(<[_]>::first)
    }

    /// The message of an error event (`None`: the event is no error).
    pub fn error_message(&self) -> Option<String> {
        if !self.error.is_present() {
            return None;
        }
        let message = self
            .error
            .value()
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("engine error");
        Some(message.to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice<'a> {
    /// Chat: what the token adds.
    #[serde(borrow, default)]
    pub delta: Option<Delta<'a>>,
    /// Completions: the token's text.
    #[serde(borrow, default)]
    pub text: Field<Text<'a>>,
    #[serde(default)]
    pub token_ids: Option<Vec<u64>>,
    #[serde(default)]
    pub prompt_token_ids: Option<Vec<u64>>,
    /// Passed to the log-probability translation as it came; only there when asked for.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Text<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Delta<'a> {
    #[serde(default)]
    pub role: Field<IgnoredAny>,
    #[serde(borrow, default)]
    pub content: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub reasoning: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub reasoning_content: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub tool_calls: Field<Vec<ToolCallDelta<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ToolCallDelta<'a> {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(borrow, default)]
    pub function: Option<FunctionDelta<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub arguments: Option<Text<'a>>,
}

/// Reads one event's JSON: in one pass when it has vLLM's shape, else by serde (the
/// answer is serde's either way: see [`compact`]).
pub fn parse(data: &[u8]) -> Result<Chunk<'_>, serde_json::Error> {
    match compact::chunk(data) {
        Some(chunk) => Ok(chunk),
        None => serde_json::from_slice(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_told_apart_when_missing_null_or_there() {
        let c = parse(br#"{"choices":[{"delta":{"content":null,"role":"assistant"}}]}"#).unwrap();
        let d = c.choice().and_then(|c| c.delta.as_ref()).unwrap();
        assert_eq!(d.content, Field::Null);
        assert!(d.role.is_present());
        assert!(!d.tool_calls.is_present());
        assert!(c.error_message().is_none());
    }

    #[test]
    fn text_is_borrowed_unless_it_had_escapes() {
        let c = parse(br#"{"choices":[{"text":"plain","delta":{"content":"a\nb"}}]}"#).unwrap();
        let choice = c.choice().unwrap();
        assert!(matches!(
            choice.text,
            Field::Value(Text(Cow::Borrowed("plain")))
        ));
        let content = choice.delta.as_ref().unwrap().content.value().unwrap();
        assert!(matches!(&content.0, Cow::Owned(s) if s == "a\nb"));
    }

    #[test]
    fn errors_are_read_in_any_shape() {
        let message = |json: &[u8]| parse(json).unwrap().error_message();
        assert_eq!(
            message(br#"{"error":{"message":"boom","code":500}}"#).as_deref(),
            Some("boom")
        );
        assert_eq!(
            message(br#"{"error":"plain"}"#).as_deref(),
            Some("engine error")
        );
        assert_eq!(
            message(br#"{"error":null}"#).as_deref(),
            Some("engine error")
        );
    }

    #[test]
    fn the_rest_of_a_real_chunk_is_skipped_and_nulls_are_no_values() {
        let c = parse(br#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[],"usage":{"prompt_tokens":9,"total_tokens":12,"completion_tokens":3,"prompt_tokens_details":null},"prompt_token_ids":null}"#).unwrap();
        assert!(c.choice().is_none());
        let u = c.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(9), Some(3)));
        assert!(c.prompt_token_ids.is_none());
        assert!(parse(br#"{"choices":null,"usage":null}"#).is_ok());
    }
}
