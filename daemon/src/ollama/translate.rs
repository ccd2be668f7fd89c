//! Ollama requests → the engine's OpenAI requests. Unknown fields are ignored (clients send
//! extras); fields vllama reads are checked, and a wrong type is a 400 that names the field.

use crate::engine::profile::Think;
use serde_json::{json, Map, Value};

use std::borrow::Cow;

use super::outbound::{ChatMessage, Content};
use super::request::{Message, Messages};

/// A request that cannot be translated: the message for Ollama's `{"error": ...}` (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// Sampling options: Ollama's `options` → OpenAI/vLLM parameters, into `body`.
pub fn options(options: Option<&Value>, body: &mut Map<String, Value>) -> Result<(), Invalid> {
    let Some(options) = options else {
        return Ok(());
    };
    if options.is_null() {
        return Ok(());
    }
    let Some(options) = options.as_object() else {
        return Err(invalid("options must be an object"));
    };
    for (key, value) in options {
        if value.is_null() {
            continue;
        }
        let number = || {
            value
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| invalid(format!("option {key} must be a number, not {value}")))
        };
        let integer = || {
            value
                .as_i64()
                .ok_or_else(|| invalid(format!("option {key} must be an integer, not {value}")))
        };
        match key.as_str() {
            "temperature" | "top_p" | "min_p" | "presence_penalty" | "frequency_penalty" => {
                body.insert(key.clone(), json!(number()?));
            }
            "top_k" => {
                body.insert("top_k".into(), json!(integer()?));
            }
            "seed" => {
                body.insert("seed".into(), json!(integer()?));
            }
            "repeat_penalty" => {
                body.insert("repetition_penalty".into(), json!(number()?));
            }
            "num_predict" => {
                let n = integer()?;
                // -1: no limit; -2: fill the context. Both: let the engine decide.
                if n >= 0 {
                    body.insert("max_tokens".into(), json!(n));
                }
            }
            "stop" => {
                let stops: Vec<&str> = match value {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(items) => items
                        .iter()
                        .map(|s| {
                            s.as_str()
                                .ok_or_else(|| invalid("option stop must be a list of strings"))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(invalid("option stop must be a list of strings")),
                };
                body.insert("stop".into(), json!(stops));
            }
            // Accepted and ignored, as Ollama ignores options a runner cannot use.
            other => tracing::debug!(option = other, "option not applicable to vLLM; ignored"),
        }
    }
    Ok(())
}

/// `format`: "json" → a JSON object; a JSON schema → structured output with it.
pub fn format(format: Option<&Value>, body: &mut Map<String, Value>) -> Result<(), Invalid> {
    match format {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.is_empty() => Ok(()),
        Some(Value::String(s)) if s == "json" => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
            Ok(())
        }
        Some(schema @ Value::Object(_)) => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
            Ok(())
        }
        Some(other) => Err(invalid(format!(
            "invalid format {other}: use \"json\" or a JSON schema object"
        ))),
    }
}

/// What a request's `think` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking<'a> {
    Unset,
    Off,
    On,
    /// "low" | "medium" | "high" ("max" is taken as "high").
    Level(&'a str),
}

impl Thinking<'_> {
    pub fn parse(think: Option<&Value>) -> Result<Thinking<'_>, Invalid> {
        match think {
            None | Some(Value::Null) => Ok(Thinking::Unset),
            Some(Value::Bool(false)) => Ok(Thinking::Off),
            Some(Value::Bool(true)) => Ok(Thinking::On),
            Some(Value::String(level)) => match level.as_str() {
                "low" | "medium" | "high" => Ok(Thinking::Level(level)),
                "max" => Ok(Thinking::Level("high")),
                _ => Err(invalid(format!(
                    "invalid think \"{level}\": use true, false, \"low\", \"medium\", \"high\" or \"max\""
                ))),
            },
            Some(other) => Err(invalid(format!(
                "invalid think {other}: use true, false, \"low\", \"medium\", \"high\" or \"max\""
            ))),
        }
    }

    /// Asks the model to reason (so a model without reasoning refuses it).
    pub fn wanted(self) -> bool {
        matches!(self, Thinking::On | Thinking::Level(_))
    }
}

/// `think` as the model's family reads it: its template's switch (`chat_template_kwargs`),
/// a reasoning effort (gpt-oss, which always reasons: `false` is its lowest effort), or
/// nothing for a model that always reasons (DeepSeek-R1 distills) or never does.
pub fn think(think: Thinking<'_>, style: Think, body: &mut Map<String, Value>) {
    match (style, think) {
        (_, Thinking::Unset) | (Think::None | Think::Always, _) => {}
        (Think::Toggle(key), Thinking::Off) => {
            body.insert("chat_template_kwargs".into(), json!({key: false}));
        }
        (Think::Toggle(key), Thinking::On) => {
            body.insert("chat_template_kwargs".into(), json!({key: true}));
        }
        (Think::Toggle(key), Thinking::Level(level)) => {
            body.insert("chat_template_kwargs".into(), json!({key: true}));
            body.insert("reasoning_effort".into(), json!(level));
        }
        (Think::Effort, Thinking::Off) => {
            body.insert("reasoning_effort".into(), json!("low"));
        }
        (Think::Effort, Thinking::On) => {
            body.insert("reasoning_effort".into(), json!("medium"));
        }
        (Think::Effort, Thinking::Level(level)) => {
            body.insert("reasoning_effort".into(), json!(level));
        }
    }
}

/// `logprobs` and `top_logprobs` (0–20): the alternatives to report per token, or `None`
/// when no log probabilities are asked for (`top_logprobs` alone asks for none, as in
/// Ollama).
pub fn logprobs(logprobs: Option<&Value>, top: Option<&Value>) -> Result<Option<u8>, Invalid> {
    let wanted = match logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(invalid(format!(
                "logprobs must be true or false, not {other}"
            )))
        }
    };
    let top = match top {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= 20)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| invalid(format!("top_logprobs must be between 0 and 20, not {v}")))?,
    };
    Ok(wanted.then_some(top))
}

/// Log probabilities asked of the engine: the chat API's `logprobs`/`top_logprobs`, or the
/// completions API's `logprobs: N` (`raw` generate).
pub fn ask_logprobs(top: Option<u8>, chat: bool, body: &mut Map<String, Value>) {
    let Some(top) = top else {
        return;
    };
    if chat {
        body.insert("logprobs".into(), json!(true));
        body.insert("top_logprobs".into(), json!(top));
    } else {
        body.insert("logprobs".into(), json!(top));
    }
}

/// One chunk's (or answer's) log probabilities from vLLM, in Ollama's shape:
/// `[{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]`.
/// `lp` is the choice's `logprobs` member.
pub fn ollama_logprobs(lp: &Value) -> Vec<Value> {
    if let Some(content) = lp["content"].as_array() {
        return content
            .iter()
            .map(|t| {
                let mut o = token_logprob(t);
                if let Some(top) = t["top_logprobs"].as_array().filter(|a| !a.is_empty()) {
                    let top = top
                        .iter()
                        .map(|x| Value::Object(token_logprob(x)))
                        .collect();
                    o.insert("top_logprobs".into(), Value::Array(top));
                }
                Value::Object(o)
            })
            .collect();
    }
    // The completions API: parallel lists, alternatives as {token: logprob} objects.
    let Some(tokens) = lp["tokens"].as_array() else {
        return Vec::new();
    };
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let mut o = Map::new();
            o.insert("token".into(), token.clone());
            o.insert(
                "logprob".into(),
                lp["token_logprobs"].get(i).cloned().unwrap_or(json!(0.0)),
            );
            if let Some(Value::Object(top)) = lp["top_logprobs"].get(i) {
                let top = top
                    .iter()
                    .map(|(t, l)| json!({"token": t, "logprob": l}))
                    .collect();
                o.insert("top_logprobs".into(), Value::Array(top));
            }
            Value::Object(o)
        })
        .collect()
}

fn token_logprob(t: &Value) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("token".into(), t["token"].clone());
    o.insert("logprob".into(), t["logprob"].clone());
    if let Some(bytes) = t.get("bytes").filter(|b| b.is_array()) {
        o.insert("bytes".into(), bytes.clone());
    }
    o
}

/// The MIME type of a base64 image, from its first bytes.
fn image_mime(b64: &str) -> Result<&'static str, Invalid> {
    let head = b64.trim_start();
    let mime = if head.starts_with("iVBORw0KGgo") {
        "image/png"
    } else if head.starts_with("/9j/") {
        "image/jpeg"
    } else if head.starts_with("R0lGOD") {
        "image/gif"
    } else if head.starts_with("UklGR") {
        "image/webp"
    } else {
        return Err(invalid(
            "images must be base64-encoded PNG, JPEG, GIF or WebP",
        ));
    };
    let valid = head
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'));
    if !valid {
        return Err(invalid("images must be valid base64"));
    }
    Ok(mime)
}

/// A message's content with its images as OpenAI content parts (the content as it came
/// when there are none).
fn content<'a>(text: Content<'a>, images: Option<&Value>) -> Result<(Content<'a>, usize), Invalid> {
    let images: Vec<&str> = match images {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| invalid("images must be a list of base64 strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("images must be a list of base64 strings")),
    };
    if images.is_empty() {
        return Ok((text, 0));
    }
    let mut parts = vec![json!({"type": "text", "text": text.text()})];
    for image in &images {
        let mime = image_mime(image)?;
        parts.push(json!({"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{image}")}}));
    }
    Ok((Content::Parts(parts), images.len()))
}

/// Ollama chat messages → OpenAI messages; also returns how many images they carry. The
/// texts are passed on as the client wrote them (typed read) or moved (tree read).
pub fn messages(messages: Messages<'_>) -> Result<(Vec<ChatMessage<'_>>, usize), Invalid> {
    match messages {
        Messages::Read(m) => read_messages(m.into_iter().map(Ok)),
        Messages::Values(m) => read_messages(
            m.into_iter()
                .enumerate()
                .map(|(i, m)| Message::from_value(i, m)),
        ),
    }
}

fn read_messages<'a>(
    messages: impl ExactSizeIterator<Item = Result<Message<'a>, Invalid>>,
) -> Result<(Vec<ChatMessage<'a>>, usize), Invalid> {
    let mut out = Vec::with_capacity(messages.len());
    let mut images = 0;
    let mut call_ids: Vec<(String, String)> = Vec::new(); // (function name, call id)
    for m in messages {
        let m = m?;
        let text = m.content.unwrap_or(Content::Text(Cow::Borrowed("")));
        let (content, n) = content(text, m.images.as_ref())?;
        images += n;
        let mut msg = ChatMessage {
            role: m.role.0,
            content,
            tool_calls: None,
            tool_call_id: None,
            name: None,
        };
        if let Some(Value::Array(calls)) = &m.tool_calls {
            let mut openai_calls = Vec::new();
            for call in calls {
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let args = match call.pointer("/function/arguments") {
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(other) => other.to_string(),
                };
                let id = format!("call_{}", call_ids.len());
                call_ids.push((name.clone(), id.clone()));
                openai_calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
            }
            msg.tool_calls = Some(openai_calls);
        }
        if msg.role == "tool" {
            let name = m.tool_name.as_ref().and_then(Value::as_str).unwrap_or("");
            let id = call_ids
                .iter()
                .rev()
                .find(|(n, _)| n == name || name.is_empty())
                .map(|(_, id)| id.clone())
                .unwrap_or_else(|| "call_0".into());
            msg.tool_call_id = Some(id);
            if !name.is_empty() {
                msg.name = Some(name.to_string());
            }
        }
        out.push(msg);
    }
    Ok((out, images))
}

/// A generate request's prompt as chat messages (system, then the prompt with its images).
pub fn generate_messages<'a>(
    system: Option<Content<'a>>,
    prompt: Content<'a>,
    images: Option<&Value>,
) -> Result<(Vec<ChatMessage<'a>>, usize), Invalid> {
    let mut out = Vec::new();
    let message = |role: &'static str, content| ChatMessage {
        role: Cow::Borrowed(role),
        content,
        tool_calls: None,
        tool_call_id: None,
        name: None,
    };
    if let Some(system) = system.filter(|s| !s.is_empty()) {
        out.push(message("system", system));
    }
    let (content, n) = content(prompt, images)?;
    out.push(message("user", content));
    Ok((out, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_options_map_to_vllm() {
        let mut body = Map::new();
        let opts = json!({"temperature": 0.2, "top_k": 40, "top_p": 0.9, "seed": 7, "num_predict": 64,
            "repeat_penalty": 1.1, "stop": ["\n\n"], "num_ctx": 4096, "mirostat": 1, "min_p": 0.05});
        options(Some(&opts), &mut body).unwrap();
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["repetition_penalty"], 1.1);
        assert_eq!(body["stop"], json!(["\n\n"]));
        assert!(!body.contains_key("num_ctx") && !body.contains_key("mirostat"));
        let mut body = Map::new();
        options(Some(&json!({"num_predict": -1})), &mut body).unwrap();
        assert!(!body.contains_key("max_tokens"));
        for bad in [
            json!({"temperature": "hot"}),
            json!({"top_k": 1.5}),
            json!({"stop": 3}),
            json!([1]),
        ] {
            assert!(options(Some(&bad), &mut Map::new()).is_err(), "{bad}");
        }
        let err = options(Some(&json!({"temperature": "hot"})), &mut Map::new()).unwrap_err();
        assert!(err.0.contains("temperature"), "{err}");
    }

    #[test]
    fn formats_and_think() {
        let mut body = Map::new();
        format(Some(&json!("json")), &mut body).unwrap();
        assert_eq!(body["response_format"]["type"], "json_object");
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        format(Some(&schema), &mut body).unwrap();
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema);
        assert!(format(Some(&json!("yaml")), &mut body).is_err());
        let qwen3 = Think::Toggle("enable_thinking");
        think(
            Thinking::parse(Some(&json!(false))).unwrap(),
            qwen3,
            &mut body,
        );
        assert_eq!(body["chat_template_kwargs"]["enable_thinking"], false);
        think(
            Thinking::parse(Some(&json!("high"))).unwrap(),
            qwen3,
            &mut body,
        );
        assert_eq!(body["reasoning_effort"], "high");
        assert!(Thinking::parse(Some(&json!(3))).is_err());
        assert!(Thinking::parse(Some(&json!("extreme"))).is_err());
        assert_eq!(
            Thinking::parse(Some(&json!("max"))).unwrap(),
            Thinking::Level("high")
        );
        let mut granite = Map::new();
        think(Thinking::On, Think::Toggle("thinking"), &mut granite);
        assert_eq!(granite["chat_template_kwargs"]["thinking"], true);
        let mut oss = Map::new();
        think(Thinking::Off, Think::Effort, &mut oss);
        assert_eq!(
            oss["reasoning_effort"], "low",
            "gpt-oss always reasons: off is its least"
        );
        let mut r1 = Map::new();
        think(Thinking::Off, Think::Always, &mut r1);
        assert!(r1.is_empty(), "an always-reasoning template has no switch");
    }

    #[test]
    fn logprobs_are_checked_and_reshaped() {
        assert_eq!(logprobs(Some(&json!(true)), Some(&json!(2))), Ok(Some(2)));
        assert_eq!(logprobs(Some(&json!(true)), None), Ok(Some(0)));
        assert_eq!(logprobs(None, Some(&json!(3))), Ok(None));
        assert!(logprobs(Some(&json!(true)), Some(&json!(21))).is_err());
        assert!(logprobs(Some(&json!(true)), Some(&json!(-1))).is_err());
        assert!(logprobs(Some(&json!("yes")), None).is_err());
        // vLLM 0.32's chat shape, recorded.
        let chat = json!({"logprobs": {"content": [{"token": " the", "logprob": -0.5, "bytes": [32, 116, 104, 101],
            "top_logprobs": [{"token": " the", "logprob": -0.5, "bytes": [32, 116, 104, 101]}, {"token": " a", "logprob": -1.5, "bytes": [32, 97]}]}]}});
        assert_eq!(
            ollama_logprobs(&chat["logprobs"]),
            [
                json!({"token": " the", "logprob": -0.5, "bytes": [32, 116, 104, 101],
                "top_logprobs": [{"token": " the", "logprob": -0.5, "bytes": [32, 116, 104, 101]}, {"token": " a", "logprob": -1.5, "bytes": [32, 97]}]})
            ]
        );
        let completion = json!({"logprobs": {"tokens": ["x"], "token_logprobs": [-0.25], "top_logprobs": [{"x": -0.25, "y": -2.0}], "text_offset": [0]}});
        let got = ollama_logprobs(&completion["logprobs"]);
        assert_eq!(got[0]["token"], "x");
        assert_eq!(got[0]["logprob"], -0.25);
        assert_eq!(got[0]["top_logprobs"].as_array().map(Vec::len), Some(2));
        assert!(ollama_logprobs(&Value::Null).is_empty());
    }

    #[test]
    fn tool_calls_go_back_as_openai_strings_with_ids() {
        let (msgs, images) = messages(Messages::Values(vec![
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
            json!({"role": "tool", "content": "22C", "tool_name": "get_weather"}),
        ]))
        .unwrap();
        let msgs = serde_json::to_value(msgs).unwrap();
        assert_eq!(images, 0);
        let call = &msgs[1]["tool_calls"][0];
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(msgs[2]["tool_call_id"], call["id"]);
        assert_eq!(msgs[2]["role"], "tool");
    }

    #[test]
    fn images_become_content_parts() {
        let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
        let (msgs, n) = messages(Messages::Values(vec![
            json!({"role": "user", "content": "what is it?", "images": [png]}),
        ]))
        .unwrap();
        let msgs = serde_json::to_value(msgs).unwrap();
        assert_eq!(n, 1);
        let parts = msgs[0]["content"].as_array().unwrap();
        assert_eq!(parts[0]["text"], "what is it?");
        assert!(parts[1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,iVBOR"));
        assert!(messages(Messages::Values(vec![
            json!({"role": "user", "content": "x", "images": ["not base64 at all!"]})
        ]))
        .is_err());
        assert!(messages(Messages::Values(vec![
            json!({"role": "user", "content": "x", "images": [3]})
        ]))
        .is_err());
        assert!(messages(Messages::Values(vec![json!({"content": "no role"})])).is_err());
        assert!(messages(Messages::Values(vec![
            json!({"role": "user", "content": {"x": 1}})
        ]))
        .is_err());
    }
}
