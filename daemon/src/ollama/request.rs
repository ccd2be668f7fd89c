//! An Ollama chat or generate request as its handler reads it. Most bodies are read in one
//! pass into typed members: the model's name and the messages' roles borrowed from the body,
//! the messages' contents, the prompt and the system prompt kept as the JSON strings the
//! client wrote (passed on to the engine as they are: `outbound`), no map built for the
//! request or for each message (a `serde_json::Value` tree spent ~5 900 instructions on a
//! one-message chat: a B-tree and a `String` for every key and text).
//!
//! Whatever the typed read refuses — a member of the wrong type, a member named twice, an
//! array where an object belongs, no `model`, a `\u` escape, broken JSON — is read again as a
//! JSON tree and checked member by member, so that the answer, and the error that names the
//! field, are what the tree alone gives (the tests `typed_and_tree_reads_agree` and
//! `generated_bodies_read_alike` compare the two reads).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::chunk::Text;
use super::outbound::Content;
use super::translate::Invalid;
use crate::http::Reject;
use crate::models::ModelName;
use crate::needle::Needle;
use crate::units::KeepAlive;
use hyper::StatusCode;

/// Which route a request came by: the members its handler checks first differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Generate,
}

/// A chat or generate request's members, checked as far as its handler's first checks go
/// (the model, `keep_alive`, `stream`, then a chat's `messages` being a list, a generate's
/// `raw`, `prompt`, `system` and `suffix`); the rest are checked where they are translated, in
/// the order the handlers have always checked them.
#[derive(Debug)]
pub struct Request<'a> {
    /// The name as the client wrote it (trimmed), and as parsed.
    pub model: String,
    pub name: ModelName,
    pub keep_alive: Option<KeepAlive>,
    pub stream: bool,
    /// A chat's.
    pub messages: Messages<'a>,
    /// A generate's.
    pub raw: bool,
    /// As the client wrote them (typed read), or their texts (tree read).
    pub prompt: Option<Content<'a>>,
    pub system: Option<Content<'a>>,
    pub suffix: Option<Text<'a>>,
    pub images: Option<Value>,
    pub options: Option<Value>,
    pub format: Option<Value>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub shift: Option<Value>,
    pub truncate: Option<Value>,
    pub tools: Option<Value>,
    pub think: Option<Value>,
    pub template: Option<Value>,
}

/// The messages: read typed, or left as JSON values (the tree's read), each checked when it
/// is translated.
#[derive(Debug)]
pub enum Messages<'a> {
    Read(Vec<Message<'a>>),
    Values(Vec<Value>),
}

impl Messages<'_> {
    pub fn is_empty(&self) -> bool {
        match self {
            Messages::Read(m) => m.is_empty(),
            Messages::Values(m) => m.is_empty(),
        }
    }
}

/// One chat message, as translation reads it.
#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    #[serde(borrow)]
    pub role: Text<'a>,
    /// As the client wrote it (typed read), or its text (tree read).
    #[serde(borrow, default)]
    pub content: Option<Content<'a>>,
    #[serde(default)]
    pub images: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_name: Option<Value>,
}

impl Message<'static> {
    /// `messages[i]` of the tree's read, checked as the typed read checks it.
    pub fn from_value(i: usize, m: Value) -> Result<Message<'static>, Invalid> {
        let Value::Object(mut m) = m else {
            return Err(Invalid(format!("messages[{i}] must be an object")));
        };
        let role = match m.remove("role") {
            Some(Value::String(role)) => role,
            _ => return Err(Invalid(format!("messages[{i}].role is required"))),
        };
        let content = match m.remove("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Content::Text(Cow::Owned(s))),
            Some(_) => return Err(Invalid(format!("messages[{i}].content must be a string"))),
        };
        Ok(Message {
            role: Text(Cow::Owned(role)),
            content,
            images: m.remove("images").filter(|v| !v.is_null()),
            tool_calls: m.remove("tool_calls").filter(|v| !v.is_null()),
            tool_name: m.remove("tool_name").filter(|v| !v.is_null()),
        })
    }
}

/// The members the typed read takes; any other member is skipped unread, as the tree's
/// read ignores it.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    messages: Option<Vec<ObjectOnly<Message<'a>>>>,
    #[serde(default)]
    raw: Option<bool>,
    #[serde(borrow, default)]
    prompt: Option<Content<'a>>,
    #[serde(borrow, default)]
    system: Option<Content<'a>>,
    #[serde(borrow, default)]
    suffix: Option<Text<'a>>,
    #[serde(default)]
    images: Option<Value>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    shift: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    think: Option<Value>,
    #[serde(default)]
    template: Option<Value>,
}

impl<'a> Request<'a> {
    /// Reads a request: typed when the body has the plain shape, else as a JSON tree.
    pub fn read(body: &'a [u8], route: Route) -> Result<Request<'a>, Reject> {
        match typed(body) {
            Some(fields) => Request::from_fields(fields),
            None => Request::from_map(super::object(body)?, route),
        }
    }

    /// The typed read: `null` members are absent ones, as the handlers have always taken
    /// them; a request without `model` (one that names it `name`) is the tree's to read.
    fn from_fields(f: Fields<'a>) -> Result<Request<'a>, Reject> {
        let (model, name) = super::model_named(f.model.as_ref().map_or("", Text::as_str))?;
        let keep_alive = super::keep_alive_value(f.keep_alive.as_ref())?;
        Ok(Request {
            model,
            name,
            keep_alive,
            stream: f.stream.unwrap_or(true),
            messages: Messages::Read(
                f.messages
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| m.0)
                    .collect(),
            ),
            raw: f.raw.unwrap_or(false),
            prompt: f.prompt,
            system: f.system,
            suffix: f.suffix,
            images: f.images,
            options: f.options,
            format: f.format,
            logprobs: f.logprobs,
            top_logprobs: f.top_logprobs,
            shift: f.shift.map(Value::Bool),
            truncate: f.truncate.map(Value::Bool),
            tools: f.tools,
            think: f.think,
            template: f.template,
        })
    }

    /// The tree's read, checked in the order its handler has always checked it.
    fn from_map(mut req: Map<String, Value>, route: Route) -> Result<Request<'static>, Reject> {
        let (model, name) = super::model_of(&req)?;
        let keep_alive = super::keep_alive_of(&req)?;
        let stream = super::bool_of(&req, "stream", true)?;
        let mut messages = Vec::new();
        let (mut raw, mut prompt, mut system, mut suffix) = (false, None, None, None);
        match route {
            Route::Chat => {
                messages = match req.remove("messages") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(m)) => m,
                    Some(_) => {
                        return Err(Reject(
                            StatusCode::BAD_REQUEST,
                            "messages must be a list".into(),
                        ))
                    }
                }
            }
            Route::Generate => {
                raw = super::bool_of(&req, "raw", false)?;
                prompt = take_text(&mut req, "prompt")?.map(|t| Content::Text(t.0));
                system = take_text(&mut req, "system")?.map(|t| Content::Text(t.0));
                suffix = take_text(&mut req, "suffix")?;
            }
        }
        let mut take = |key: &str| req.remove(key).filter(|v| !v.is_null());
        Ok(Request {
            model,
            name,
            keep_alive,
            stream,
            messages: Messages::Values(messages),
            raw,
            prompt,
            system,
            suffix,
            images: take("images"),
            options: take("options"),
            format: take("format"),
            logprobs: take("logprobs"),
            top_logprobs: take("top_logprobs"),
            shift: take("shift"),
            truncate: take("truncate"),
            tools: take("tools"),
            think: take("think"),
            template: take("template"),
        })
    }
}

/// A string member taken out of the tree (moved, not copied), checked as the handler checks
/// it.
fn take_text(req: &mut Map<String, Value>, key: &str) -> Result<Option<Text<'static>>, Reject> {
    match req.remove(key) {
        Some(Value::String(s)) => Ok(Some(Text(Cow::Owned(s)))),
        other => super::str_value(key, other.as_ref()).map(|_| None),
    }
}

/// The typed read, or `None` for the tree to read: a body that is not an object, one whose
/// members the typed read refuses, or one with a `\u` escape anywhere (serde checks the
/// escapes of a member it skips less closely than those of one it reads: a lone surrogate is
/// refused by the tree's read, wherever it is). UTF-8 is checked once, for the whole body, as
/// the tree's read checks it (a skipped member's bytes too).
fn typed(body: &[u8]) -> Option<Fields<'_>> {
    // a backslash then `u` (or an escaped backslash then `u`: the tree reads that too),
    // looked for as a pair: a history full of escaped quotes and newlines stops a search for
    // single backslashes at each one
    static ESCAPE: Needle = Needle::new(b"\\u");
    if ESCAPE.find(body).is_some() {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let ObjectOnly(fields) = ObjectOnly::<Fields>::deserialize(&mut de).ok()?;
    de.end().ok()?;
    fields.model.is_some().then_some(fields)
}

/// A `T` read from a JSON object only: serde's derive also reads a struct from an array (its
/// members by position), which the tree's read refuses.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(Only(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a read gives, in a form two reads can be compared by (or its error): the members
    /// the route's handler reads.
    fn summary(read: Result<Request<'_>, Reject>, route: Route) -> String {
        let r = match read {
            Err(e) => return format!("error {} {}", e.0.as_u16(), e.1),
            Ok(r) => r,
        };
        let own = match route {
            Route::Chat => {
                let messages: Vec<String> = match r.messages {
                    Messages::Read(m) => m.iter().map(message).collect(),
                    Messages::Values(m) => m
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| match Message::from_value(i, v) {
                            Ok(m) => message(&m),
                            Err(e) => format!("invalid {e}"),
                        })
                        .collect(),
                };
                format!("{messages:?}")
            }
            Route::Generate => {
                let text = |c: &Option<Content<'_>>| c.as_ref().map(|c| c.text().into_owned());
                format!(
                    "{} {:?} {:?} {:?}",
                    r.raw,
                    text(&r.prompt),
                    text(&r.system),
                    r.suffix
                )
            }
        };
        // Cow's Borrowed and Owned print alike: the texts are compared, not their home
        format!(
            "{} {} {:?} {} {own} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            r.model,
            r.name.as_str(),
            r.keep_alive,
            r.stream,
            r.images,
            r.options,
            r.format,
            r.logprobs,
            r.top_logprobs,
            r.shift,
            r.truncate,
            r.tools,
            r.think,
            r.template
        )
    }

    /// A message's members, its content as the text it holds (the typed read keeps it as
    /// written, the tree's read unescaped).
    fn message(m: &Message<'_>) -> String {
        let content = m.content.as_ref().map(Content::text);
        format!(
            "{:?} {content:?} {:?} {:?} {:?}",
            m.role.as_str(),
            m.images,
            m.tool_calls,
            m.tool_name
        )
    }

    fn tree(body: &[u8], route: Route) -> String {
        let read = super::super::object(body).and_then(|m| Request::from_map(m, route));
        summary(read, route)
    }

    /// Whether the body is read typed, and what each read gives, for each route.
    fn both(body: &str) -> (bool, [(String, String); 2]) {
        let typed = typed(body.as_bytes()).is_some();
        let read = |route| {
            let read = Request::read(body.as_bytes(), route);
            (summary(read, route), tree(body.as_bytes(), route))
        };
        (typed, [read(Route::Chat), read(Route::Generate)])
    }

    fn agree(body: &str) -> bool {
        let (typed, reads) = both(body);
        for (read, tree) in reads {
            assert_eq!(read, tree, "{body}");
        }
        typed
    }

    #[test]
    fn a_plain_chat_is_read_typed_with_its_texts_borrowed() {
        let body = br#"{"model":"tiny","messages":[{"role":"user","content":"Say hi"}],"stream":false,"options":{"num_predict":1},"extra":{"x":[1,2]}}"#;
        let chat = Request::read(body, Route::Chat).unwrap();
        assert_eq!((chat.model.as_str(), chat.stream), ("tiny", false));
        let Messages::Read(m) = &chat.messages else {
            panic!("read as a tree: {chat:?}");
        };
        assert!(matches!(m[0].role.0, Cow::Borrowed("user")));
        let Some(Content::Json(content)) = &m[0].content else {
            panic!("the content not kept as written: {m:?}");
        };
        assert_eq!(content.literal(), r#""Say hi""#);
        assert_eq!(chat.options, Some(serde_json::json!({"num_predict": 1})));
    }

    #[test]
    fn typed_and_tree_reads_agree() {
        let cases = [
            r#"{"model":"m","messages":[{"role":"user","content":"a\nb"}]}"#,
            r#"{"model":" m:latest ","stream":null,"keep_alive":"5m","messages":null}"#,
            r#"{"model":"m","keep_alive":-1,"think":true,"template":"t","shift":false}"#,
            r#"{"model":"m","keep_alive":"soon"}"#,
            r#"{"model":"  "}"#,
            r#"{"model":"m","name":"n"}"#,
            r#"{"name":"n","messages":[]}"#,
            r#"{"model":null,"name":"n"}"#,
            r#"{"model":3}"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"model":"m","stream":"yes"}"#,
            r#"{"model":"m","messages":{}}"#,
            r#"{"model":"m","messages":[["user","hi"]]}"#,
            r#"{"model":"m","messages":[{"content":"hi"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":7}]}"#,
            r#"{"model":"m","messages":[{"role":"user","role":"system"}]}"#,
            r#"{"model":"m","messages":[{"role":"tool","content":null,"tool_name":"f","images":null}]}"#,
            r#"{"model":"m","messages":[{"role":"user","images":["x"],"tool_calls":[{}]}]}"#,
            r#"{"model":"m","truncate":1}"#,
            r#"{"model":"m","options":[],"format":"json","logprobs":true,"top_logprobs":3,"tools":[]}"#,
            r#"["m"]"#,
            r#"{"model":"m","other":"\ud800"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9"}]}"#,
            r#"{"model":"m","prompt":"why?","system":"be brief","raw":true,"images":["x"]}"#,
            r#"{"model":"m","prompt":3}"#,
            r#"{"model":"m","prompt":null,"suffix":"","raw":null,"system":null}"#,
            r#"{"model":"m","raw":"yes","suffix":7}"#,
            r#"{"model":"m","prompt":"a\tb","suffix":"end"}"#,
            r#"{"model":"m"} x"#,
            r#"{"model":"m""#,
            "  ",
            "",
        ];
        let typed: Vec<bool> = cases.iter().map(|body| agree(body)).collect();
        // a skipped member's bytes are checked as UTF-8, as the tree checks them
        let latin1 = b"{\"model\":\"m\",\"other\":\"caf\xe9\"}";
        let read = summary(Request::read(latin1, Route::Chat), Route::Chat);
        assert_eq!(read, tree(latin1, Route::Chat));
        assert!(read.starts_with("error 400"), "{read}");
        // the plain shapes are the typed read's (else it saves nothing)
        for plain in [0, 1, 2, 16, 23, 25, 27] {
            assert!(typed[plain], "{}", cases[plain]);
        }
    }

    #[test]
    fn generated_bodies_read_alike() {
        // members the chat and generate read, values of every JSON type, some members named
        // twice
        let keys = [
            "raw",
            "prompt",
            "system",
            "suffix",
            "images",
            "model",
            "name",
            "stream",
            "keep_alive",
            "messages",
            "options",
            "format",
            "think",
            "tools",
            "template",
            "shift",
            "truncate",
            "logprobs",
            "top_logprobs",
            "other",
        ];
        let values = [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "2.5",
            "\"\"",
            "\"m\"",
            "\"5m\"",
            "[]",
            "{}",
            r#"[{"role":"user","content":"hi"}]"#,
            r#"[{"role":"user","content":null,"images":[]}]"#,
            r#"[{"role":1}]"#,
            r#"{"num_predict":1}"#,
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut typed_reads = 0;
        for _ in 0..5_000 {
            let members: Vec<String> = (0..next(6))
                .map(|_| {
                    format!(
                        "\"{}\":{}",
                        keys[next(keys.len())],
                        values[next(values.len())]
                    )
                })
                .collect();
            let model = if next(4) > 0 { "\"model\":\"m\"," } else { "" };
            let body = format!("{{{model}{}}}", members.join(","));
            typed_reads += usize::from(agree(&body));
        }
        assert!(typed_reads > 500, "only {typed_reads} of 5 000 read typed");
    }
}
