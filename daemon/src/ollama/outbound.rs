//! The OpenAI request an Ollama chat or generate becomes, written straight into the engine's
//! body: typed messages, whose texts read from the client's body are passed on as the client
//! wrote them (a JSON string literal, escapes and all, is JSON as it stands: no unescaping
//! on the way in, no escaping on the way out), and the sampling parameters as a map. A
//! `serde_json::Map` per message and for the body, built, written and dropped, and each text
//! unescaped and escaped again: a one-message chat cost ~4 000 instructions more than it does
//! now (the body is ~1 200 to write), a 16 KB prompt 2.5× the pass-through's instructions
//! (1.14× now; docs/PERFORMANCE.md).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _};
use serde::ser::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::chunk::Text;

/// A JSON string literal as it was read (quotes and escapes included). Only a string is
/// read into one: anything else is refused, as a text member of another type is.
#[derive(Clone, Copy)]
pub struct JsonStr<'a>(&'a RawValue);

impl<'a> JsonStr<'a> {
    /// The text it holds, borrowed unless it had escapes.
    pub fn text(self) -> Cow<'a, str> {
        // it was read as a JSON string, so it reads again as one
        serde_json::from_str::<Text<'a>>(self.0.get())
            .map(|t| t.0)
            .unwrap_or_default()
    }

    /// The literal, quotes included.
    pub fn literal(self) -> &'a str {
        self.0.get()
    }
}

impl fmt::Debug for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'a RawValue>::deserialize(d)?;
        match raw.get().as_bytes().first() {
            Some(b'"') => Ok(JsonStr(raw)),
            _ => Err(D::Error::custom("expected a string")),
        }
    }
}

impl Serialize for JsonStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A message's content.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Content<'a> {
    /// As the client wrote it (the typed read of its body).
    Json(JsonStr<'a>),
    /// A text to be written as JSON (what the tree's read holds; a missing text's `""`).
    Text(Cow<'a, str>),
    /// Text and images as OpenAI content parts.
    Parts(Vec<Value>),
}

impl<'a> Content<'a> {
    /// Whether it is the empty text (or no parts).
    pub fn is_empty(&self) -> bool {
        match self {
            Content::Json(j) => j.literal() == "\"\"",
            Content::Text(t) => t.is_empty(),
            Content::Parts(p) => p.is_empty(),
        }
    }

    /// About how many bytes it takes in JSON.
    fn size_hint(&self) -> usize {
        match self {
            Content::Json(j) => j.literal().len(),
            Content::Text(t) => t.len() + 2,
            Content::Parts(_) => 64,
        }
    }

    /// The text (a list of parts has none of its own).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Json(j) => j.text(),
            Content::Text(t) => Cow::Borrowed(t),
            Content::Parts(_) => Cow::Borrowed(""),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    /// A string member of the client's body, kept as written.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        JsonStr::deserialize(d).map(Content::Json)
    }
}

/// One OpenAI chat message.
#[derive(Debug, serde::Serialize)]
pub struct ChatMessage<'a> {
    pub role: Cow<'a, str>,
    pub content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What the engine is asked to go on from.
#[derive(Debug)]
pub enum Input<'a> {
    /// The chat completions API.
    Messages(Vec<ChatMessage<'a>>),
    /// The completions API (`raw` generate): the prompt as is.
    Prompt(Content<'a>),
}

/// An Ollama request as the engine's OpenAI request.
#[derive(Debug)]
pub struct EngineRequest<'a> {
    pub input: Input<'a>,
    /// Everything else the translation set: sampling, format, tools, log probabilities,
    /// thinking, the template, `truncate_prompt_tokens`.
    pub params: Map<String, Value>,
}

/// The members of a `/tokenize` request besides the model and the input.
const TOKENIZE: [&str; 2] = ["chat_template", "chat_template_kwargs"];

impl EngineRequest<'_> {
    /// The completion request's body: streamed, with usage, for `model` (the engine's
    /// served name); `token_ids` asks for the prompt's and the answer's token ids.
    pub fn body(&self, model: &str, token_ids: bool) -> serde_json::Result<Vec<u8>> {
        let mut out = self.head(model)?;
        out.extend_from_slice(br#","stream":true,"stream_options":{"include_usage":true}"#);
        if token_ids {
            out.extend_from_slice(br#","return_token_ids":true"#);
        }
        for (key, value) in &self.params {
            member(&mut out, key, value)?;
        }
        out.push(b'}');
        Ok(out)
    }

    /// The body of a `/tokenize` request that counts this request's prompt.
    pub fn tokenize_body(&self, model: &str) -> serde_json::Result<Vec<u8>> {
        let mut out = self.head(model)?;
        for key in TOKENIZE {
            if let Some(value) = self.params.get(key) {
                member(&mut out, key, value)?;
            }
        }
        out.push(b'}');
        Ok(out)
    }

    /// The body's first members, the model and the input, its object left open.
    fn head(&self, model: &str) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256 + self.input_len());
        out.extend_from_slice(br#"{"model":"#);
        serde_json::to_writer(&mut out, model)?;
        match &self.input {
            Input::Messages(m) => member(&mut out, "messages", m)?,
            Input::Prompt(p) => member(&mut out, "prompt", p)?,
        }
        Ok(out)
    }

    /// About how many bytes the input's texts take.
    fn input_len(&self) -> usize {
        match &self.input {
            Input::Messages(m) => m.iter().map(|m| m.content.size_hint() + 32).sum(),
            Input::Prompt(p) => p.size_hint(),
        }
    }
}

/// `,"key":value`, after a member already written.
fn member(out: &mut Vec<u8>, key: &str, value: &impl Serialize) -> serde_json::Result<()> {
    out.push(b',');
    serde_json::to_writer(&mut *out, key)?;
    out.push(b':');
    serde_json::to_writer(out, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read<'a>(json: &'a str) -> Result<Content<'a>, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_text_is_passed_on_as_written() {
        for literal in [
            r#""plain""#,
            r#""a\nb \"q\" \\ \/ \t""#,
            r#""caf\u00e9""#,
            r#""""#,
        ] {
            let content = read(literal).unwrap();
            let Content::Json(j) = content else {
                panic!("not kept as written: {content:?}")
            };
            assert_eq!(j.literal(), literal);
            let text: String = serde_json::from_str(literal).unwrap();
            assert_eq!(j.text(), text);
            assert_eq!(serde_json::to_string(&content).unwrap(), literal);
        }
        assert!(matches!(
            read(r#""plain""#).unwrap().text(),
            Cow::Borrowed("plain")
        ));
    }

    #[test]
    fn only_strings_are_texts() {
        for other in ["7", "null", "true", "[\"a\"]", "{\"a\":1}"] {
            assert!(read(other).is_err(), "{other}");
        }
    }

    #[test]
    fn the_body_is_the_maps_body() {
        let body = br#"{"role":"user","content":"hi \"there\"\n"}"#;
        #[derive(serde::Deserialize)]
        struct M<'a> {
            #[serde(borrow)]
            content: Content<'a>,
        }
        let m: M = serde_json::from_slice(body).unwrap();
        let messages = Input::Messages(vec![
            ChatMessage {
                role: "system".into(),
                content: Content::Text("be brief".into()),
                tool_calls: None,
                tool_call_id: None,
                name: None,
            },
            ChatMessage {
                role: "user".into(),
                content: m.content,
                tool_calls: None,
                tool_call_id: None,
                name: None,
            },
            ChatMessage {
                role: "tool".into(),
                content: Content::Parts(vec![json!({"type": "text", "text": "x"})]),
                tool_calls: Some(vec![json!({"id": "call_0"})]),
                tool_call_id: Some("call_0".into()),
                name: Some("f".into()),
            },
        ]);
        let mut request = EngineRequest {
            input: messages,
            params: Map::new(),
        };
        request.params.insert("max_tokens".into(), json!(5));
        request.params.insert("chat_template".into(), json!("t"));
        let messages = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi \"there\"\n"},
            {"role": "tool", "content": [{"type": "text", "text": "x"}],
             "tool_calls": [{"id": "call_0"}], "tool_call_id": "call_0", "name": "f"},
        ]);
        let sent: Value = serde_json::from_slice(&request.body("served", true).unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"model": "served", "stream": true, "stream_options": {"include_usage": true},
                   "return_token_ids": true, "messages": messages, "max_tokens": 5, "chat_template": "t"})
        );
        let counted: Value =
            serde_json::from_slice(&request.tokenize_body("served").unwrap()).unwrap();
        assert_eq!(
            counted,
            json!({"model": "served", "messages": messages, "chat_template": "t"})
        );
        let raw = EngineRequest {
            input: Input::Prompt(Content::Text("say \"hi\"".into())),
            params: Map::new(),
        };
        let sent: Value = serde_json::from_slice(&raw.body("m", false).unwrap()).unwrap();
        assert_eq!(
            sent,
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}, "prompt": "say \"hi\""})
        );
    }
}
